"""Loads and validates a project's `tower.toml` into typed settings.

Every problem is reported as one line naming the file, the key and what was expected, so a
user can fix a project without reading tower's code.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tower.core.simprofiles import FAULT_NAMES, SIM_PROFILES, is_sim

PROJECT_FILE = "tower.toml"
BUILTIN_TOOLS = ("read_file", "write_file", "list_dir", "ask_human", "finish")


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


class LimitSettings(_Strict):
    max_concurrent: int = Field(default=16, ge=1, le=10_000)


class ModelSettings(_Strict):
    """Per-model settings; the sim-only keys tune the offline models."""

    max_concurrent: int | None = Field(default=None, ge=1)
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


class PolicySettings(_Strict):
    ask: list[str] = Field(default_factory=lambda: ["write_file"])


class AgentSettings(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    system_prompt: str = "You are a careful agent. Use the tools, then call finish."
    cascade: list[str] = Field(default_factory=lambda: ["sim/small"], min_length=1)
    tools: list[str] = Field(default_factory=lambda: list(BUILTIN_TOOLS))
    max_steps: int = Field(default=20, ge=1, le=1000)
    max_tokens: int = Field(default=512, ge=1, le=200_000)


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
    script: list[ScriptStep] = Field(default_factory=list)


class Project(_Strict):
    project: ProjectMeta
    budget: BudgetSettings = BudgetSettings()
    limits: LimitSettings = LimitSettings()
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    policy: PolicySettings = PolicySettings()
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
        return self.models.get(model, ModelSettings())


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
                    f"agents[{i}].tools[{j}]: unknown tool {tool!r}, "
                    f"expected one of {', '.join(BUILTIN_TOOLS)}"
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
    for j, tool in enumerate(p.policy.ask):
        if tool not in BUILTIN_TOOLS:
            expected = ", ".join(BUILTIN_TOOLS)
            problems.append(f"policy.ask[{j}]: unknown tool {tool!r}, expected one of {expected}")
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
        tools = p.agent(task.agent).tools
        for j, step in enumerate(task.script):
            if step.tool is not None and step.tool not in tools:
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
