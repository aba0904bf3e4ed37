"""Context compaction: a long thread's older tool results folded, so its prompt stays within
the model's context window ([compaction] in tower.toml).

When a call's prompt would pass `at` of the model's context window (litellm's model info,
or `[models."…"] context_window`), the thread's tool results except the last `keep_last`
are folded. They are replaced by one summary that a cheap model writes, or are elided with
a marker saying how much was there and that the tool can be called again. The folding is
an event (`compacted`): the conversation applies it as it applies every other event, so
the live loop, replay, resume and fork all see the same messages. A summary's call is
reserved before it is made, and its cost is booked like any call's.

Pure functions: which messages to fold, and what they become.
"""

from __future__ import annotations

from typing import Any

SUMMARY_HEAD = "Summary of earlier tool results (written for tower, to keep this thread short)"
FOLDED_INTO = "[folded into the summary above by tower]"
# What a summary call may write, at most.
SUMMARY_MAX_TOKENS = 400
# A tool result shorter than this is left alone: folding it saves nothing.
_MIN_CHARS = 200


def elision(chars: int) -> str:
    """The marker an elided result becomes."""
    return (
        f"[elided by tower to keep the context short: {chars:,} characters of this tool's"
        " result; call the tool again if you need it]"
    )


def is_folded(content: Any) -> bool:
    text = str(content or "")
    return text.startswith(("[elided by tower", SUMMARY_HEAD)) or text == FOLDED_INTO


def to_fold(messages: list[dict[str, Any]], keep_last: int) -> list[dict[str, Any]]:
    """The tool results to fold: every one not folded yet and long enough to matter,
    except the last `keep_last` tool results of the conversation (the model is working on
    those)."""
    tools = [m for m in messages if m.get("role") == "tool"]
    older = tools[: max(len(tools) - keep_last, 0)]
    return [
        m
        for m in older
        if not is_folded(m.get("content")) and len(str(m.get("content") or "")) >= _MIN_CHARS
    ]


def summary_request(folded: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """The messages that ask a model to summarise the folded results for the thread."""
    parts = [
        f"--- result {i} (tool call {m.get('tool_call_id')}) ---\n{m.get('content')}"
        for i, m in enumerate(folded, 1)
    ]
    return [
        {
            "role": "system",
            "content": (
                "You condense an agent's earlier tool results so it can keep working within"
                " its context window. Keep every figure, name, path and fact the task may"
                " need; drop repetition. Answer with the summary only."
            ),
        },
        {"role": "user", "content": f"The agent's task: {task}\n\n" + "\n\n".join(parts)},
    ]


def apply_fold(messages: list[dict[str, Any]], folded: list[str], mode: str, summary: str) -> None:
    """Replaces the folded results in place: the first by the summary (or, elided, each by
    its marker), the others by a pointer to it. Tool messages stay where they are, so
    every tool call keeps its result and the conversation stays valid for any provider."""
    ids = set(folded)
    first = True
    for m in messages:
        if m.get("role") != "tool" or m.get("tool_call_id") not in ids:
            continue
        if mode == "summary":
            m["content"] = f"{SUMMARY_HEAD}:\n{summary}" if first else FOLDED_INTO
        else:
            m["content"] = elision(len(str(m.get("content") or "")))
        first = False
