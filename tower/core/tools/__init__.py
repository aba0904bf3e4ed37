"""Built-in tools: their JSON schemas for the model and their implementations.

`ask_human` and `finish` are handled by the agent loop itself (they talk to the human or end
the thread); the file and search tools live in `files.py`, the shell in `shell.py`.
"""

from __future__ import annotations

from typing import Any

from tower.core.tools.files import ToolError, Workspace

__all__ = ["TOOL_SCHEMAS", "ToolError", "Workspace", "tool_schemas"]


def _fn(name: str, description: str, props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": required},
        },
    }


_STR = {"type": "string"}

TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "read_file": _fn(
        "read_file",
        "Read a text file from your workspace.",
        {"path": {**_STR, "description": "Path relative to the workspace."}},
        ["path"],
    ),
    "write_file": _fn(
        "write_file",
        "Create or overwrite a text file in your workspace (may need human approval).",
        {"path": {**_STR, "description": "Path relative to the workspace."}, "content": _STR},
        ["path", "content"],
    ),
    "list_dir": _fn(
        "list_dir",
        "List a folder of your workspace; folders end with '/'.",
        {"path": {**_STR, "description": "Folder relative to the workspace; default '.'."}},
        [],
    ),
    "search": _fn(
        "search",
        "Search the text files of your workspace; returns path:line: text for each match.",
        {
            "pattern": {**_STR, "description": "Text to find (a regular expression if regex)."},
            "path": {**_STR, "description": "Folder to search, relative; default '.'."},
            "glob": {**_STR, "description": "Only files whose name matches, e.g. '*.py'."},
            "regex": {"type": "boolean", "description": "Treat pattern as a regex."},
            "ignore_case": {"type": "boolean"},
        },
        ["pattern"],
    ),
    "run_shell": _fn(
        "run_shell",
        "Run a shell command in your workspace (no input; time and output are limited; may "
        "need human approval). Returns the exit status and the output.",
        {"command": {**_STR, "description": "The command line, run with /bin/sh -c."}},
        ["command"],
    ),
    "ask_human": _fn(
        "ask_human",
        "Ask the human orchestrator a question and wait for the answer.",
        {"question": _STR},
        ["question"],
    ),
    "spawn_agent": _fn(
        "spawn_agent",
        "Start a sub-agent on part of your task; it runs alongside you and spends from your "
        "budget. Returns its id at once; call wait_agents to get its answer.",
        {
            "prompt": {**_STR, "description": "The sub-agent's whole task, self-contained."},
            "agent": {**_STR, "description": "Which agent template; default: your own."},
            "model": {**_STR, "description": "Its model; default: the template's first."},
            "budget_usd": {
                "type": "number",
                "description": "Its cap in USD, carved out of what you have left.",
            },
            "title": {**_STR, "description": "A short title for the orchestrator's screen."},
        },
        ["prompt"],
    ),
    "wait_agents": _fn(
        "wait_agents",
        "Wait until your sub-agents have ended and get their answers.",
        {
            "ids": {
                "type": "array",
                "items": _STR,
                "description": "Which sub-agents; default: every one not yet waited for.",
            }
        },
        [],
    ),
    "finish": _fn(
        "finish",
        "End the task with your final answer.",
        {"answer": _STR},
        ["answer"],
    ),
}


def tool_schemas(names: list[str]) -> list[dict[str, Any]]:
    return [TOOL_SCHEMAS[n] for n in names if n in TOOL_SCHEMAS]
