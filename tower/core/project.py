"""Loads and validates a project's `tower.toml` into typed settings.

Every problem is reported as one line naming the file, the key and what was expected, so a
user can fix a project without reading tower's code.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tower.core.policy import Action, Rule, parse_rule
from tower.core.simprofiles import FAULT_NAMES, SIM_PROFILES, is_sim

PROJECT_FILE = "tower.toml"
BUILTIN_TOOLS = (
    "read_file",
    "write_file",
    "list_dir",
    "search",
    "run_shell",
    "ask_human",
    "finish",
)
# What an agent gets when it names no tools: no shell unless asked for.
DEFAULT_TOOLS = ("read_file", "write_file", "list_dir", "ask_human", "finish")
# An MCP server's tool `get_time` reaches the model as `<server>__get_time`.
MCP_SEP = "__"


class ProjectError(Exception):
    """A project that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectMeta(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 0
    call_timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    retry_backoff_s: float = Field(default=0.5, ge=0, le=60)
    copy_workspaces: bool = True


class BudgetSettings(_Strict):
    usd: float | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    thread_usd: float | None = Field(default=None, gt=0)
    thread_tokens: int | None = Field(default=None, gt=0)
    # The person's attention is budgeted too: past `human_minutes` of deciding, routine
    # items (a rule could decide them, or they cost under `routine_usd`) wait in a digest.
    human_minutes: float | None = Field(default=None, gt=0)
    routine_usd: float = Field(default=0.01, ge=0)


class LimitSettings(_Strict):
    max_concurrent: int = Field(default=16, ge=1, le=10_000)


class ModelSettings(_Strict):
    """Per-model settings; the sim-only keys tune the offline models."""

    max_concurrent: int | None = Field(default=None, ge=1)
    rpm: int | None = Field(default=None, ge=1)  # requests per minute
    tpm: int | None = Field(default=None, ge=1)  # tokens (prompt + completion) per minute
    # A local or self-hosted OpenAI-compatible server (vLLM, LM Studio, llama.cpp):
    api_base: str | None = Field(default=None, pattern=r"^https?://")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    tokens_per_s: float | None = Field(default=None, ge=0)
    latency_s: float | None = Field(default=None, ge=0)
    wrong_rate: float | None = Field(default=None, ge=0, le=1)
    input_usd_per_mtok: float | None = Field(default=None, ge=0)
    output_usd_per_mtok: float | None = Field(default=None, ge=0)
    faults: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _faults_known(self) -> ModelSettings:
        for name, chance in self.faults.items():
            if name not in FAULT_NAMES:
                raise ValueError(
                    f"unknown fault {name!r}, expected one of {', '.join(FAULT_NAMES)}"
                )
            if not 0 <= chance <= 1:
                raise ValueError(f"fault {name!r} chance must be between 0 and 1")
        return self

    def endpoint(self) -> dict[str, str]:
        """Where to call the model when it is not the provider's default: api_base, api_key."""
        out: dict[str, str] = {}
        if self.api_base:
            out["api_base"] = self.api_base
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            out["api_key"] = key or "none"  # local servers ignore it; the SDK wants one
        elif self.api_key_env and os.environ.get(self.api_key_env):
            out["api_key"] = os.environ[self.api_key_env]
        return out

    def sim_overrides(self) -> dict[str, Any]:
        keys = ("tokens_per_s", "latency_s", "wrong_rate", "input_usd_per_mtok")
        out = {
            k: getattr(self, k)
            for k in (*keys, "output_usd_per_mtok")
            if getattr(self, k) is not None
        }
        if self.faults:
            out["faults"] = dict(self.faults)
        return out


class RuleSettings(_Strict):
    """A policy rule as a table: a tool glob, argument globs, optionally one agent."""

    tool: str = Field(default="*", min_length=1)
    args: dict[str, str] = Field(default_factory=dict)
    agent: str | None = None


_NO_SETTINGS = ModelSettings()


class PolicySettings(_Strict):
    """deny, then ask, then allow; a call no rule matches gets the least-privilege default."""

    deny: list[str | RuleSettings] = Field(default_factory=list)
    ask: list[str | RuleSettings] = Field(default_factory=list)
    allow: list[str | RuleSettings] = Field(default_factory=list)

    def rules(self) -> list[Rule]:
        out = []
        for action in (Action.DENY, Action.ASK, Action.ALLOW):
            for i, spec in enumerate(getattr(self, str(action))):
                raw = spec if isinstance(spec, str) else spec.model_dump()
                out.append(
                    parse_rule(raw, action, f"tower.toml policy.{action}[{i}]", f"{action}{i}")
                )
        return out


class ShellSettings(_Strict):
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_output_bytes: int = Field(default=20_000, ge=4_000, le=10_000_000)


class McpServerSettings(_Strict):
    """A stdio MCP server; `{python}` and `{project}` in command and args are filled in."""

    # No "__" and no trailing "_": `<server>__<tool>` must split back unambiguously.
    name: str = Field(min_length=1, max_length=24, pattern=r"^[A-Za-z0-9-]+(?:_[A-Za-z0-9-]+)*$")
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    call_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    startup_timeout_s: float = Field(default=30.0, gt=0, le=600)


class CheckSettings(_Strict):
    """A task's self-check; every criterion given must hold. A failure escalates."""

    answer_contains: list[str] = Field(default_factory=list)
    answer_matches: str | None = None
    file: str | None = None
    file_contains: list[str] = Field(default_factory=list)
    command: str | None = Field(default=None, min_length=1)
    timeout_s: float = Field(default=60.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _something_to_check(self) -> CheckSettings:
        if not (self.answer_contains or self.answer_matches or self.file or self.command):
            raise ValueError("a check needs answer_contains, answer_matches, file or command")
        if self.file_contains and not self.file:
            raise ValueError("file_contains needs file")
        if self.answer_matches is not None:
            try:
                re.compile(self.answer_matches)
            except re.error as exc:
                raise ValueError(
                    f"answer_matches is not a valid regular expression: {exc}"
                ) from None
        return self


class AgentSettings(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    system_prompt: str = "You are a careful agent. Use the tools, then call finish."
    cascade: list[str] = Field(default_factory=lambda: ["sim/small"], min_length=1)
    tools: list[str] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    mcp: list[str] = Field(default_factory=list)
    max_steps: int = Field(default=20, ge=1, le=1000)
    max_tokens: int = Field(default=512, ge=1, le=200_000)
    # Automatic escalation to the cascade's next model.
    escalate_after_errors: int = Field(default=3, ge=1, le=100)
    escalate_on_repeat: int = Field(default=3, ge=2, le=100)
    max_escalation_usd: float | None = Field(default=None, gt=0)


Fault = Literal["rate_limit", "server_error", "timeout", "malformed_tool_json"]


class ScriptStep(_Strict):
    """One scripted turn of a sim model: optional text, then optionally one tool call."""

    say: str = ""
    tool: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    wrong_args: dict[str, Any] | None = None
    answer: str | None = None
    fault: Fault | None = None
    fault_times: int = Field(default=1, ge=1)
    # A gullible model: obeys "run `cmd`" found in the last tool result (prompt injection).
    obey: bool = False


class TaskSettings(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    agent: str
    prompt: str = Field(min_length=1)
    title: str = ""
    workspace: str | None = None
    priority: int = 0
    repeat: int = Field(default=1, ge=1, le=10_000)
    budget_usd: float | None = Field(default=None, gt=0)
    answer: str | None = None
    check: CheckSettings | None = None
    script: list[ScriptStep] = Field(default_factory=list)


class Project(_Strict):
    project: ProjectMeta
    budget: BudgetSettings = BudgetSettings()
    limits: LimitSettings = LimitSettings()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    policy: PolicySettings = PolicySettings()
    shell: ShellSettings = ShellSettings()
    mcp_servers: list[McpServerSettings] = Field(default_factory=list)
    agents: list[AgentSettings] = Field(min_length=1)
    tasks: list[TaskSettings] = Field(default_factory=list)

    # Set by load_project, not by the file.
    root: Path = Path(".")

    @property
    def name(self) -> str:
        return self.project.name

    def agent(self, name: str) -> AgentSettings:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def task(self, task_id: str) -> TaskSettings:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise KeyError(task_id)

    def all_models(self) -> list[str]:
        seen: dict[str, None] = {}
        for agent in self.agents:
            for model in agent.cascade:
                seen.setdefault(model, None)
        return list(seen)

    def model_settings(self, model: str) -> ModelSettings:
        # Asked on every model call: one shared (frozen) default, not a new model each time.
        return self.models.get(model, _NO_SETTINGS)


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings class that holds the last key of loc (to list what was expected)."""
    model: type[BaseModel] = Project
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:  # a dict key such as a model name: stay on the dict's value type
            continue
        inner = field.annotation
        for arg in (*get_args(inner), inner):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
            if get_args(arg):  # list[Model], dict[str, Model]
                found = [
                    a for a in get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)
                ]
                if found:
                    model = found[0]
                    break
        else:
            return None
    return model


def _unknown_key(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc)
    if model is None:
        return "unknown key"
    allowed = [k for k in model.model_fields if k != "root"]
    guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"unknown key{hint}; expected one of {', '.join(allowed)}"


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _guess(word: str, options: list[str]) -> str:
    found = difflib.get_close_matches(word, options, n=1)
    return f"did you mean {found[0]!r}? " if found else ""


def _cross_check(p: Project) -> list[str]:
    """Checks pydantic cannot express: references between sections, known tools and models."""
    problems: list[str] = []
    agent_names = [a.name for a in p.agents]
    for i, agent in enumerate(p.agents):
        if agent.name in agent_names[:i]:
            problems.append(f"agents[{i}].name: duplicate agent name {agent.name!r}")
        for j, tool in enumerate(agent.tools):
            if tool not in BUILTIN_TOOLS:
                problems.append(
                    f"agents[{i}].tools[{j}]: unknown tool {tool!r} "
                    f"({_guess(tool, list(BUILTIN_TOOLS))}expected one of "
                    f"{', '.join(BUILTIN_TOOLS)}; MCP servers go in `mcp`)"
                )
        for j, model in enumerate(agent.cascade):
            if is_sim(model) and model not in SIM_PROFILES:
                problems.append(
                    f"agents[{i}].cascade[{j}]: unknown sim model {model!r}, "
                    f"expected one of {', '.join(SIM_PROFILES)}"
                )
    for name in p.models:
        if is_sim(name) and name not in SIM_PROFILES:
            problems.append(
                f"models.{name}: unknown sim model, expected one of {', '.join(SIM_PROFILES)}"
            )
    servers = [m.name for m in p.mcp_servers]
    for i, server in enumerate(p.mcp_servers):
        if server.name in servers[:i]:
            problems.append(f"mcp_servers[{i}].name: duplicate server name {server.name!r}")
    for i, agent in enumerate(p.agents):
        for j, name in enumerate(agent.mcp):
            if name not in servers:
                known = ", ".join(servers) if servers else "none are configured"
                problems.append(
                    f"agents[{i}].mcp[{j}]: unknown MCP server {name!r} ({_guess(name, servers)}"
                    f"[[mcp_servers]]: {known})"
                )
    for action in ("deny", "ask", "allow"):
        for j, spec in enumerate(getattr(p.policy, action)):
            tool = spec if isinstance(spec, str) else spec.tool
            if any(c in tool for c in "*?[") or tool in BUILTIN_TOOLS:
                continue
            server = tool.split(MCP_SEP, 1)[0] if MCP_SEP in tool else None
            if server in servers:
                continue
            problems.append(
                f"policy.{action}[{j}]: unknown tool {tool!r} ({_guess(tool, list(BUILTIN_TOOLS))}"
                f"expected one of {', '.join(BUILTIN_TOOLS)}, an MCP tool "
                f"`<server>{MCP_SEP}<tool>`, or a glob)"
            )
        for j, spec in enumerate(getattr(p.policy, action)):
            if (
                not isinstance(spec, str)
                and spec.agent is not None
                and spec.agent not in agent_names
            ):
                problems.append(
                    f"policy.{action}[{j}].agent: unknown agent {spec.agent!r}, "
                    f"expected one of {', '.join(agent_names)}"
                )
    task_ids = [t.id for t in p.tasks]
    for i, task in enumerate(p.tasks):
        if task.id in task_ids[:i]:
            problems.append(f"tasks[{i}].id: duplicate task id {task.id!r}")
        if task.agent not in agent_names:
            problems.append(
                f"tasks[{i}].agent: unknown agent {task.agent!r}, "
                f"expected one of {', '.join(agent_names)}"
            )
            continue
        agent = p.agent(task.agent)
        tools = agent.tools
        for j, step in enumerate(task.script):
            on_server = step.tool is not None and step.tool.split(MCP_SEP, 1)[0] in agent.mcp
            if step.tool is not None and step.tool not in tools and not on_server:
                problems.append(
                    f"tasks[{i}].script[{j}].tool: {step.tool!r} is not among agent "
                    f"{task.agent!r}'s tools ({', '.join(tools)})"
                )
        if task.workspace is not None:
            ws = (p.root / task.workspace).resolve()
            if not ws.is_dir():
                problems.append(f"tasks[{i}].workspace: folder {task.workspace!r} does not exist")
    return problems


def parse_project(text: str, root: Path, filename: str = PROJECT_FILE) -> Project:
    """Parses and validates project text; raises ProjectError with one line per problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProjectError([f"{filename}: not valid TOML: {exc}"]) from None
    return project_from_data(data, root, filename)


def project_from_data(data: dict[str, Any], root: Path, filename: str = PROJECT_FILE) -> Project:
    """Validates already-parsed project data (a tower.toml, or one with a variant laid over)."""
    if "root" in data:
        raise ProjectError([f"{filename}: root: {_unknown_key(('root',))}"])
    try:
        project = Project.model_validate({**data, "root": root})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(err["loc"])
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{filename}: {_loc(err['loc'])}: {msg}")
        raise ProjectError(problems) from None
    problems = [f"{filename}: {line}" for line in _cross_check(project)]
    if problems:
        raise ProjectError(problems)
    return project


def load_project(directory: str | Path) -> Project:
    """Reads DIR/tower.toml (or a tower.toml path given directly)."""
    path = Path(directory)
    if path.is_file():
        path = path.parent
    file = path / PROJECT_FILE
    if not path.exists():
        raise ProjectError([f"{path}: no such project folder"])
    if not file.is_file():
        raise ProjectError([f"{file}: missing project file (expected {PROJECT_FILE} in {path})"])
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError([f"{file}: cannot read: {exc}"]) from None
    return parse_project(text, path.resolve(), str(file))
