"""Loads and validates a project's `tower.toml` into typed settings.

Every problem is reported as one line naming the file, the key and what was expected, so a
user can fix a project without reading tower's code.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from tower.core.items import ItemsError, count_items
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
    "spawn_agent",
    "wait_agents",
)
# What an agent gets when it names no tools: no shell unless asked for.
DEFAULT_TOOLS = ("read_file", "write_file", "list_dir", "ask_human", "finish")
# An MCP server's tool `get_time` reaches the model as `<server>__get_time`.
MCP_SEP = "__"

# Limits that keep a hostile or broken file from reaching tomllib's, pydantic's or the
# filesystem's own failure modes (a RecursionError, a NUL in a path, a copy of /etc).
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 32  # arrays and tables, counted from the top of the file
MAX_NAME = 200  # characters in a name, id, title, model or tool name
MAX_THREADS = 1_000_000  # threads of all tasks together (repeat included); fed lazily
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # TOML's integers are 64-bit
_MAX_SCAN_PROBLEMS = 20
# Control, format (zero-width, bidi overrides), surrogate, private-use, line/paragraph breaks.
_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_JOINERS = frozenset("\u200c\u200d")  # ZWNJ, ZWJ: part of Persian, Indic and emoji text
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _show(value: str, width: int = 40) -> str:
    """A string for a one-line message: quoted, escaped, shortened."""
    return repr(value[:width]) + ("…" if len(value) > width else "")


def _bad_char(value: str) -> str | None:
    for i, ch in enumerate(value):
        if unicodedata.category(ch) in _BAD_CATEGORIES and ch not in _JOINERS:
            return f"U+{ord(ch):04X} at position {i}"
    return None


def _check_name(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a name, got an empty or blank string")
    bad = _bad_char(value)
    if bad:
        raise ValueError(f"expected a name without control or invisible characters, found {bad}")
    if value != value.strip():
        raise ValueError("expected a name without leading or trailing spaces")
    return value


def _check_title(value: str) -> str:
    return _check_name(value) if value else value


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError(
            f"expected letters, digits, '_', '.' or '-', starting with a letter or digit, "
            f"got {_show(value)}"
        )
    return value


# A name shown on screen or matched against: non-blank, one line, no invisible characters.
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME), AfterValidator(_check_name)
]
Title = Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(_check_title)]
# An id that becomes a thread id, and so a folder name: no '/', no '..', no spaces.
Ident = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME), AfterValidator(_check_id)
]


class ProjectError(Exception):
    """A project that cannot be used; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def reload_words(project: Project | ProjectError) -> tuple[str, str]:
    """What a screen says (title, message) when tower.toml was edited: reloaded, or a bad
    edit that changed nothing. One wording for the TUI and for a fleet's views."""
    if isinstance(project, ProjectError):
        problems = project.problems or ["invalid"]
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return "tower.toml not reloaded", f"{problems[0]}{more} — kept the previous version"
    return "tower.toml reloaded", (
        f"{len(project.agents)} agent(s), {len(project.tasks)} task(s) ready to spawn (n); "
        "the policy and model limits apply now; MCP servers change on the next start"
    )


class _Strict(BaseModel):
    # strict: TOML has types, so "5" is not a number and "yes" not a boolean; no inf or nan.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ProjectMeta(_Strict):
    name: Name
    description: str = ""
    seed: int = 0
    # The lane every task's model calls take unless the task names its own ([lanes]).
    lane: Name | None = None
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


MAX_WORKERS = 64


class LimitSettings(_Strict):
    max_concurrent: int = Field(default=16, ge=1, le=10_000)
    # Model calls in flight adapt below max_concurrent to tower's own event-loop lag
    # (tower/core/admission.py); `adaptive = false` admits up to max_concurrent at once.
    adaptive: bool = True
    target_lag_ms: float = Field(default=50.0, ge=1, le=10_000)
    # Model calls run in this many worker processes (core/callworkers.py): "auto" is one
    # per core once max_concurrent reaches 64, else none; 0 makes every call in-process.
    workers: int | str = "auto"
    # Sub-agents (the spawn_agent tool): how deep a tree may grow below a project task
    # (its children are depth 1) and how many children one thread may start in all.
    max_depth: int = Field(default=2, ge=1, le=8)
    max_children: int = Field(default=8, ge=1, le=1000)

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 0 <= value <= MAX_WORKERS):
            return value
        raise ValueError(f'expected "auto" or a number of processes from 0 to {MAX_WORKERS}')


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
    # Prices (USD per million tokens): a sim model's, or a real model's that litellm does not
    # price (a local or newer model); registered with litellm so its cost functions agree.
    input_usd_per_mtok: float | None = Field(default=None, ge=0)
    output_usd_per_mtok: float | None = Field(default=None, ge=0)
    cached_input_usd_per_mtok: float | None = Field(default=None, ge=0)
    # The prompt tokens the model takes (compaction keeps prompts within it): a sim model's
    # own, or a real model's where litellm's model info does not know it (a local model).
    context_window: int | None = Field(default=None, ge=256)
    # The model's own tokenizer (a Hugging Face tokenizer.json, or the GGUF file a llama.cpp
    # server loads; relative to the project folder): counts tokens when the provider reports
    # no usage (llama.cpp's server does not).
    tokenizer: str | None = None
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
        keys = (
            "tokens_per_s",
            "latency_s",
            "wrong_rate",
            "input_usd_per_mtok",
            "cached_input_usd_per_mtok",
            "context_window",
        )
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

    tool: Name = "*"
    args: dict[str, str] = Field(default_factory=dict)
    agent: Name | None = None


_NO_SETTINGS = ModelSettings()
_RULE = "RuleSettings"  # the tag pydantic gives a rule written as a table


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
    name: Ident
    description: str = ""
    system_prompt: str = "You are a careful agent. Use the tools, then call finish."
    cascade: list[Name] = Field(default_factory=lambda: ["sim/small"], min_length=1)
    tools: list[Name] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    mcp: list[Name] = Field(default_factory=list)
    max_steps: int = Field(default=20, ge=1, le=1000)
    max_tokens: int = Field(default=512, ge=1, le=200_000)
    # Sampling temperature sent with each call (none: the provider's default, above 0 at
    # most). The response cache serves only calls at 0 unless [cache] any_temperature.
    temperature: float | None = Field(default=None, ge=0, le=2)
    # Automatic escalation to the cascade's next model.
    escalate_after_errors: int = Field(default=3, ge=1, le=100)
    escalate_on_repeat: int = Field(default=3, ge=2, le=100)
    max_escalation_usd: float | None = Field(default=None, gt=0)


Fault = Literal["rate_limit", "server_error", "timeout", "malformed_tool_json"]


class ScriptStep(_Strict):
    """One scripted turn of a sim model: optional text, then optionally one tool call."""

    say: str = ""
    tool: Name | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    wrong_args: dict[str, Any] | None = None
    answer: str | None = None
    fault: Fault | None = None
    fault_times: int = Field(default=1, ge=1)
    # A gullible model: obeys "run `cmd`" found in the last tool result (prompt injection).
    obey: bool = False
    # "file": one call of the tool per file of the last listing, in one turn (a fan-out),
    # `{file}` filled in each call's args. `{last_result}` in args is the last tool result.
    each: Literal["file"] | None = None


class TaskSettings(_Strict):
    id: Ident
    agent: Name
    prompt: str = Field(min_length=1)
    title: Title = ""
    workspace: str | None = None
    priority: int = 0
    repeat: int = Field(default=1, ge=1, le=1_000_000)
    # A JSONL or CSV file beside tower.toml: one copy per item, its fields filling {field}
    # in the prompt (and title, answer, script). Loading counts its items into `repeat`.
    items: str | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    answer: str | None = None
    check: CheckSettings | None = None
    script: list[ScriptStep] = Field(default_factory=list)
    # A task graph: this task is spawned once every task (or copy) named here has ended;
    # an entry is a task id (all its copies) or a glob over task and copy ids ("screen-*").
    after: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # "all": a dependency that failed, was killed or skipped skips this task too;
    # "any": it runs once they have all ended, whatever their outcome.
    after_policy: Literal["all", "any"] = "all"
    # The lane its model calls take (a key of [lanes], or "batch"): none is the project's.
    lane: Name | None = None


_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


class LaneSettings(_Strict):
    """A lane of model calls (core/batchlane.py): its calls go through the provider's batch
    API, at batch prices, and its tasks start only inside its time window."""

    batch: bool = True
    # Local time, "HH:MM-HH:MM" (it may wrap midnight: "22:00-06:00"); none: always open.
    window: str | None = None
    # A batch is sent once its first call has waited this long, or it holds max_calls.
    collect_s: float = Field(default=2.0, ge=0, le=3600)
    max_calls: int = Field(default=1000, ge=1, le=50_000)
    # How often a submitted batch is asked whether it is done.
    poll_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        if value is not None and not _WINDOW.match(value):
            raise ValueError('expected local times "HH:MM-HH:MM", e.g. "01:00-06:00"')
        if value is not None and value[:5] == value[6:]:
            raise ValueError("the window opens and closes at the same minute")
        return value

    def minutes(self) -> tuple[int, int] | None:
        """The window as minutes after midnight (opens, closes), or None: always open."""
        if self.window is None:
            return None
        m = _WINDOW.match(self.window)
        assert m is not None
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        return h1 * 60 + m1, h2 * 60 + m2


_BATCH_LANE = LaneSettings()  # `lane = "batch"` with no [lanes.batch] table


class CacheSettings(_Strict):
    """Spending less for the same answers (docs/project-format.md, "Caching")."""

    # Provider prompt caching: the system prompt and tool definitions are marked cacheable
    # for providers that take breakpoints (Anthropic's cache_control); providers that cache
    # on their own (OpenAI, the sim models) are sent a prefix that only grows. `false`
    # marks nothing and tells the sim models not to cache (a baseline to compare with).
    prompt: bool = True
    # The response cache: a call identical to one already answered in this database
    # (model, messages, tools, sampling settings) is served from the log, at $0.
    responses: bool = False
    # ...also for calls sampled above temperature 0, whose answers are meant to vary.
    any_temperature: bool = False


class CompactionSettings(_Strict):
    """Keeping a long thread's prompt within its model's context window (core/compaction.py)."""

    # Fold older tool results when a call's prompt would pass this share of the model's
    # context window; 0 never folds (a call that does not fit then fails, or escalates).
    at: float = Field(default=0.8, ge=0, le=1)
    # The latest tool results always kept as they are.
    keep_last: int = Field(default=2, ge=0, le=100)
    # A cheap model that summarises what is folded (its call is budgeted); none elides.
    model: Name | None = None


class Project(_Strict):
    project: ProjectMeta
    budget: BudgetSettings = BudgetSettings()
    limits: LimitSettings = LimitSettings()
    cache: CacheSettings = CacheSettings()
    compaction: CompactionSettings = CompactionSettings()
    lanes: dict[Name, LaneSettings] = Field(default_factory=dict)
    models: dict[Name, ModelSettings] = Field(default_factory=dict)
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
        if self.compaction.model is not None:  # it writes summaries: priced and checked too
            seen.setdefault(self.compaction.model, None)
        return list(seen)

    def lane(self, name: str | None) -> LaneSettings | None:
        """A lane's settings ("batch" is built in); None for no lane or an unknown one."""
        if name is None:
            return None
        return self.lanes.get(name) or (_BATCH_LANE if name == "batch" else None)

    def model_settings(self, model: str) -> ModelSettings:
        # Asked on every model call: one shared (frozen) default, not a new model each time.
        return self.models.get(model, _NO_SETTINGS)

    def tokenizer_path(self, model: str) -> Path | None:
        """The model's tokenizer.json, if the project names one."""
        rel = self.model_settings(model).tokenizer
        return self.root / rel if rel else None


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
    if len(loc) > 12:  # a deeply nested place: its start says where it is
        return _loc(loc[:8]) + "…"
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = str(part)
            if not key or len(key) > 60 or not key.isprintable():
                key = _show(key, 60)  # a key with a newline or a NUL stays one line
            out += ("." if out else "") + key
    return out or "(top level)"


def _scan(data: Any) -> list[str]:
    """Problems no schema sees, found without recursion: nesting deeper than MAX_DEPTH,
    inf and nan, integers beyond 64 bits, NUL characters in any text or key."""
    problems: list[str] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack and len(problems) < _MAX_SCAN_PROBLEMS:
        path, value = stack.pop()
        if isinstance(value, (dict, list)):
            if len(path) > MAX_DEPTH:
                problems.append(
                    f"{_loc(path)}: nested too deeply; expected arrays and tables at most "
                    f"{MAX_DEPTH} levels deep"
                )
                continue
            items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            for key, item in reversed(items):
                if isinstance(key, str) and "\x00" in key:
                    problems.append(f"{_loc((*path, key))}: expected a key without NUL characters")
                    continue
                stack.append(((*path, key), item))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{_loc(path)}: expected a finite number, got {value}")
        elif isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
            problems.append(f"{_loc(path)}: expected an integer between -2^63 and 2^63-1")
        elif isinstance(value, str) and "\x00" in value:
            problems.append(
                f"{_loc(path)}: expected text without NUL characters, found one at position "
                f"{value.index(chr(0))}"
            )
    return problems


def _tokenizer_problem(path: Path, given: str) -> str | None:
    """Why `path` is not a Hugging Face tokenizer.json (read with `tokenizers`, the library
    litellm counts with; imported only for a project that names a tokenizer)."""
    from tokenizers import Tokenizer

    if path.suffix.lower() == ".gguf":
        from tower.core.gguf import tokenizer_json_from_gguf

        try:
            tokenizer_json_from_gguf(path)
        except (OSError, ValueError) as exc:
            return str(exc).replace(str(path), _show(given))  # the path as the file gives it
        return None
    try:
        Tokenizer.from_file(str(path))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"{_show(given)} is not a Hugging Face tokenizer.json ({first[:200]})"
    return None


def _workspace_problem(root: Path, rel: str) -> str | None:
    """Why `rel` is not a folder inside the project folder `root` (None: it is one)."""
    if not rel.strip():
        return "expected a folder relative to the project folder, got an empty string"
    bad = _bad_char(rel)
    if bad:
        return f"expected a folder path without control characters, found {bad}"
    if Path(rel).is_absolute():
        return f"{_show(rel)} is an absolute path; expected a folder relative to the project folder"
    try:
        base = root.resolve()
        folder = (base / rel).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long
        return f"cannot resolve {_show(rel)} ({exc}); expected a folder inside the project folder"
    if not folder.is_relative_to(base):
        return (
            f"{_show(rel)} leads outside the project folder (to {folder}); expected a folder "
            f"inside {base}"
        )
    if folder.exists() and not folder.is_dir():
        return f"{_show(rel)} is a file; expected a folder"
    if not folder.is_dir():
        return f"folder {rel!r} does not exist"
    return None


def _deep_spot(text: str, limit: int) -> tuple[int, str]:
    """Best effort, for the message only: the line and key where arrays or inline tables
    first nest deeper than `limit` (strings and comments skipped)."""
    depth, line, start, i, n = 0, 1, 0, 0, len(text)
    key, header = "", ""
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            if depth == 0:
                start = i + 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c in "\"'":
            if text.startswith(c * 3, i):
                j = i + 3
                while True:
                    k = text.find(c * 3, j)
                    if k < 0:
                        return line, key
                    slashes = len(text[:k]) - len(text[:k].rstrip("\\"))
                    if c == '"' and slashes % 2:
                        j = k + 1
                        continue
                    break
                line += text.count("\n", i, k)
                i = k + 3
                while i < n and text[i] == c:
                    i += 1
                continue
            j = i + 1
            while j < n and text[j] not in (c, "\n"):
                j += 2 if c == '"' and text[j] == "\\" else 1
            i = j + 1
            continue
        elif c == "=" and depth == 0:
            name = text[start:i].strip()
            key = f"{header}.{name}" if header else name
        elif c == "[" and depth == 0 and not text[start:i].strip():  # a [table] header
            j = text.find("\n", i)
            header = text[i : n if j < 0 else j].split("#")[0].strip().strip("[]").strip()
            key = header
            i = n if j < 0 else j
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line, key
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return line, key


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
        for field in ("cascade", "tools", "mcp"):
            entries = getattr(agent, field)
            for j, entry in enumerate(entries):
                if entry in entries[:j]:
                    problems.append(
                        f"agents[{i}].{field}[{j}]: {entry!r} is already {field}"
                        f"[{entries.index(entry)}]; expected each entry once"
                    )
        for j, model in enumerate(agent.cascade):
            if is_sim(model) and model not in SIM_PROFILES:
                problems.append(
                    f"agents[{i}].cascade[{j}]: unknown sim model {model!r}, "
                    f"expected one of {', '.join(SIM_PROFILES)}"
                )
    for name, ms in p.models.items():
        if is_sim(name) and name not in SIM_PROFILES:
            problems.append(
                f"models.{name}: unknown sim model, expected one of {', '.join(SIM_PROFILES)}"
            )
        if ms.tokenizer is not None:
            bad = _bad_char(ms.tokenizer)
            path = p.tokenizer_path(name)
            if bad or not ms.tokenizer.strip():
                problems.append(
                    f"models.{name}.tokenizer: expected a file path, found {bad or 'nothing'}"
                )
            elif path is None or not path.is_file():
                problems.append(
                    f"models.{name}.tokenizer: no such file {_show(ms.tokenizer)} "
                    f"(expected a tokenizer.json or a .gguf, relative to {p.root})"
                )
            else:
                problem = _tokenizer_problem(path, ms.tokenizer)
                if problem:
                    problems.append(f"models.{name}.tokenizer: {problem}")
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
            prefix = tool.split(MCP_SEP, 1)[0] if MCP_SEP in tool else None
            if prefix in servers:
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
    threads = 0
    if p.project.lane is not None and p.project.lane not in (*p.lanes, "batch"):
        problems.append(
            f"project.lane: unknown lane {p.project.lane!r}, expected"
            f" {', '.join(sorted({*p.lanes, 'batch'}))} (a [lanes.NAME] table)"
        )
    for i, task in enumerate(p.tasks):
        threads += task.repeat
        if threads > MAX_THREADS and threads - task.repeat <= MAX_THREADS:
            problems.append(
                f"tasks[{i}].repeat: the tasks make more than {MAX_THREADS} threads; "
                f"expected at most {MAX_THREADS} in all"
            )
        if task.id in task_ids[:i]:
            problems.append(f"tasks[{i}].id: duplicate task id {task.id!r}")
        if task.lane is None and p.project.lane is not None:
            pass  # the project's lane, checked once below
        elif task.lane is not None and task.lane not in (*p.lanes, "batch"):
            problems.append(
                f"tasks[{i}].lane: unknown lane {task.lane!r}, expected"
                f" {', '.join(sorted({*p.lanes, 'batch'}))} (a [lanes.NAME] table)"
            )
        if task.agent not in agent_names:
            problems.append(
                f"tasks[{i}].agent: unknown agent {task.agent!r}, "
                f"expected one of {', '.join(agent_names)}"
            )
            continue
        agent = p.agent(task.agent)
        tools = agent.tools
        for j, step in enumerate(task.script):
            child = step.args.get("agent") if step.tool == "spawn_agent" else None
            if isinstance(child, str) and child not in agent_names:
                problems.append(
                    f"tasks[{i}].script[{j}].args.agent: unknown agent {child!r}, "
                    f"expected one of {', '.join(agent_names)}"
                )
            on_server = step.tool is not None and step.tool.split(MCP_SEP, 1)[0] in agent.mcp
            if step.tool is not None and step.tool not in tools and not on_server:
                problems.append(
                    f"tasks[{i}].script[{j}].tool: {step.tool!r} is not among agent "
                    f"{task.agent!r}'s tools ({', '.join(tools)})"
                )
        if task.workspace is not None:
            problem = _workspace_problem(p.root, task.workspace)
            if problem:
                problems.append(f"tasks[{i}].workspace: {problem}")
    problems += _graph_problems(p)
    return problems


AFTER_REF = re.compile(r"\{after\.([A-Za-z0-9_-]+)\.answer\}")


def copy_ids(task: TaskSettings) -> list[str]:
    """The thread ids a task's copies get when the project starts."""
    return [task.id] if task.repeat == 1 else [f"{task.id}-{n}" for n in range(1, task.repeat + 1)]


def after_tasks(p: Project, task: TaskSettings) -> dict[str, list[str]]:
    """Per `after` entry, the ids of the tasks it names (an id, or a glob over task and copy
    ids: "screen-*" names the task whose copies screen-1, screen-2... match)."""
    out: dict[str, list[str]] = {}
    for entry in task.after:
        named = [
            t.id
            for t in p.tasks
            if t.id == entry
            or fnmatch.fnmatchcase(t.id, entry)
            or any(fnmatch.fnmatchcase(c, entry) for c in copy_ids(t))
        ]
        out[entry] = named
    return out


def _graph_problems(p: Project) -> list[str]:
    """Task graph errors: an `after` entry naming no task or the task itself, a cycle, an
    `{after.ID.answer}` whose ID the task does not wait for."""
    problems: list[str] = []
    edges: dict[str, list[str]] = {}
    ids = [t.id for t in p.tasks]
    for i, task in enumerate(p.tasks):
        named = after_tasks(p, task)
        for j, (entry, found) in enumerate(named.items()):
            if not found:
                problems.append(
                    f"tasks[{i}].after[{j}]: {entry!r} names no task ({_guess(entry, ids)}"
                    f"expected a task id or a glob over task and copy ids)"
                )
            elif task.id in found:
                problems.append(f"tasks[{i}].after[{j}]: task {task.id!r} cannot wait for itself")
        edges[task.id] = sorted({t for found in named.values() for t in found} - {task.id})
        waited = {c for t in edges[task.id] for c in [t, *copy_ids(p.task(t))]}
        for ref in AFTER_REF.findall(task.prompt):
            if ref not in waited:
                problems.append(
                    f"tasks[{i}].prompt: {{after.{ref}.answer}} names {ref!r}, which this task "
                    "does not wait for (add it to `after`)"
                )
        if not task.after and "{after." in task.prompt:
            problems.append(f"tasks[{i}].prompt: uses {{after...}} but the task has no `after`")
    cycle = _cycle(edges)
    if cycle:
        at = ids.index(cycle[0])
        problems.append(f"tasks[{at}].after: a cycle, {' → '.join(cycle)}")
    return problems


def _cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the graph (its ids, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in edges.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def parse_project(text: str, root: Path, filename: str = PROJECT_FILE) -> Project:
    """Parses and validates project text; raises ProjectError with one line per problem."""
    return project_from_data(loads_toml(text, filename), root, filename)


def loads_toml(text: str, filename: str = PROJECT_FILE) -> dict[str, Any]:
    """tomllib.loads, with every failure (nesting that exhausts the stack, an integer too
    long to convert) as a ProjectError line; a leading byte-order mark is ignored."""
    text = text.removeprefix("\ufeff")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProjectError([f"{filename}: not valid TOML: {exc}"]) from None
    except RecursionError:
        line, key = _deep_spot(text, MAX_DEPTH)
        where = _loc((key,)) if key else "(top level)"
        raise ProjectError(
            [
                f"{filename}: {where}: nested too deeply (line {line}); expected arrays and "
                f"tables at most {MAX_DEPTH} levels deep"
            ]
        ) from None
    except ValueError:  # Python's limit on digits in an integer
        found = re.search(r"^[ \t]*([^=\n#]+?)[ \t]*=[ \t]*[+-]?[0-9_]{1000,}", text, re.M)
        where = "(top level)"
        if found:
            tables = re.findall(r"^[ \t]*\[+[ \t]*([^\]\n]+?)[ \t]*\]", text[: found.start()], re.M)
            where = _loc((*tables[-1:], found.group(1)))
        raise ProjectError(
            [f"{filename}: {where}: integer too long; expected an integer between -2^63 and 2^63-1"]
        ) from None
    if not data:
        raise ProjectError(
            [
                f"{filename}: (top level): the file has no settings; expected a [project] "
                "table with a name and at least one [[agents]] entry"
            ]
        )
    return data


def project_from_data(data: dict[str, Any], root: Path, filename: str = PROJECT_FILE) -> Project:
    """Validates already-parsed project data (a tower.toml, or one with a variant laid over)."""
    if "root" in data:
        raise ProjectError([f"{filename}: root: {_unknown_key(('root',))}"])
    scanned = _scan(data)
    if scanned:
        raise ProjectError([f"{filename}: {line}" for line in scanned])
    try:
        project = Project.model_validate({**data, "root": root})
    except RecursionError:  # _scan bounds the depth; this is the last line of defence
        raise ProjectError(
            [f"{filename}: (top level): nested too deeply; expected at most {MAX_DEPTH} levels"]
        ) from None
    except ValidationError as exc:
        problems = []
        errors = exc.errors()
        # A policy rule is a string or a table: pydantic tries both and tags each attempt
        # (`.str`, `.RuleSettings`). A table that fails is explained by the table's errors.
        tables = {e["loc"][: e["loc"].index(_RULE)] for e in errors if _RULE in e["loc"]}
        for err in errors:
            if err["loc"][-1:] == ("str",) and err["loc"][:-1] in tables:
                continue
            # "[key]": pydantic's mark for a bad dict key; the key itself is the place.
            loc = tuple(part for part in err["loc"] if part not in (_RULE, "[key]"))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = _unknown_key(loc)
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{filename}: {_loc(loc)}: {msg}")
        raise ProjectError(problems) from None
    project, problems = _count_items(project, data)
    problems += _cross_check(project)
    if problems:
        raise ProjectError([f"{filename}: {line}" for line in problems])
    return project


def items_path(p: Project, task: TaskSettings) -> Path | None:
    return None if task.items is None else p.root / task.items


def _count_items(p: Project, data: dict[str, Any]) -> tuple[Project, list[str]]:
    """Each task with an items file gets one copy per item (`repeat` = their count), the
    file read through once and every line checked now, before anything runs."""
    if not any(t.items is not None for t in p.tasks):
        return p, []
    problems: list[str] = []
    tasks = []
    for i, task in enumerate(p.tasks):
        if task.items is None:
            tasks.append(task)
            continue
        where = f"tasks[{i}].items"
        if "repeat" in (data.get("tasks") or [{}])[i]:
            problems.append(f"{where}: a task takes its copies from `items` or `repeat`, not both")
        path = (p.root / task.items).resolve()
        if not task.items.strip() or not path.is_relative_to(p.root.resolve()):
            problems.append(f"{where}: {_show(task.items)} is not a file inside {p.root}")
        elif path.suffix.lower() not in (".jsonl", ".csv"):
            problems.append(f"{where}: {_show(task.items)}: expected a .jsonl or .csv file")
        elif not path.is_file():
            problems.append(f"{where}: no such file {_show(task.items)} (relative to {p.root})")
        else:
            try:
                n = count_items(path)
            except (ItemsError, OSError, UnicodeDecodeError) as exc:
                problems.append(f"{where}: {task.items}: {exc}")
            else:
                if n == 0:
                    problems.append(f"{where}: {task.items} has no items")
                elif n > MAX_THREADS:
                    problems.append(
                        f"{where}: {task.items} has {n:,} items; expected at most {MAX_THREADS:,}"
                    )
                else:
                    task = task.model_copy(update={"repeat": n})
        tasks.append(task)
    return p.model_copy(update={"tasks": tasks}), problems


def load_project(directory: str | Path) -> Project:
    """Reads DIR/tower.toml (or a tower.toml path given directly)."""
    path = Path(directory)
    if path.is_file():
        path = path.parent
    file = path / PROJECT_FILE
    if not path.exists():
        raise ProjectError([f"{path}: no such project folder"])
    if file.is_dir():
        raise ProjectError([f"{file}: is a folder; expected the project file {PROJECT_FILE}"])
    if file.exists() and not file.is_file():  # a FIFO, a device such as /dev/zero
        raise ProjectError([f"{file}: not a regular file; expected a TOML text file"])
    if not file.is_file():
        raise ProjectError([f"{file}: missing project file (expected {PROJECT_FILE} in {path})"])
    try:
        with file.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ProjectError([f"{file}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ProjectError(
            [f"{file}: too large; expected a project file of at most {MAX_FILE_BYTES} bytes"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ProjectError(
            [
                f"{file}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); "
                "expected a UTF-8 text file"
            ]
        ) from None
    return parse_project(text, path.resolve(), str(file))
