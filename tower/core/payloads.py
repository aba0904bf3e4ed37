"""Typed payloads: one frozen dataclass per event kind, with its version and upcasters.

An event is stored as (seq, ts, kind, thread, payload JSON). Readers used to pick payload
fields by string key, each with its own defaults; here every kind's fields are declared once,
with the defaults older logs need, and `payload_of(event)` gives the typed view. The reducer
(state.py) dispatches on these types, one small function per event, as the `eventsourcing`
library's aggregates do.

Versions: a payload is stored with `"v": N` only when its type's VERSION is above 1, so every
log written so far reads as version 1. When a field is renamed or changes meaning, bump the
type's VERSION and register an upcaster from the old version: `payload_of` runs the chain
on read, so the reducer, replay and export only ever see the current shape. A field that is
merely added needs a default here, not a version.

Fields a kind carries for some of its events only (an inbox item's kind-specific data, a
verdict's rule) are kept in `extra`, so nothing recorded is lost on the way through.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from tower.core.events import Event, EventKind


@dataclass(frozen=True, slots=True)
class Payload:
    KIND: ClassVar[EventKind]
    VERSION: ClassVar[int] = 1

    extra: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @classmethod
    def of(cls, **data: Any) -> Any:
        """The payload from keyword data, what its type does not name kept in `extra` (an
        inbox item's kind-specific fields, a fork's origin)."""
        names = _NAMES[cls]
        return cls(
            **{k: v for k, v in data.items() if k in names},
            extra={k: v for k, v in data.items() if k not in names},
        )

    def to_dict(self) -> dict[str, Any]:
        """The stored shape: the fields at the top level (with `extra`'s), a field left at
        a default of None left out (a reader gets None back either way; logs before typed
        payloads wrote some of them as null), and "v" from version 2 on, so logs written
        before versions existed read as version 1."""
        optional = _OPTIONAL[type(self)]
        out: dict[str, Any] = {}
        for name in _NAMES[type(self)]:
            value = getattr(self, name)
            if value is not None or name not in optional:
                out[name] = value
        usage = out.get("usage")
        if isinstance(usage, Usage):
            out["usage"] = {name: getattr(usage, name) for name in _USAGE_NAMES}
        if self.extra:
            for key, value in self.extra.items():
                out.setdefault(key, value)
        if self.VERSION > 1:
            out["v"] = self.VERSION
        return out


@dataclass(frozen=True, slots=True)
class SessionStarted(Payload):
    KIND = EventKind.SESSION_STARTED
    session: str
    project: str
    project_dir: str = ""
    budget_usd: float | None = None
    budget_tokens: int | None = None
    max_concurrent: int | None = None
    seed: int | None = None
    approve: str | None = None
    policy: list[dict[str, Any]] = field(default_factory=list)
    # Logs before resumable spawning lack it: they meant to run every task.
    spawn_tasks: bool = True
    # How many threads the project's tasks make (a large project spawns them as slots free;
    # views show the rest as not yet started). 0 in older logs and without spawn_tasks.
    tasks_planned: int = 0


@dataclass(frozen=True, slots=True)
class SessionEnded(Payload):
    KIND = EventKind.SESSION_ENDED
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SessionResumed(Payload):
    KIND = EventKind.SESSION_RESUMED
    threads: list[str] = field(default_factory=list)
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class ThreadSpawned(Payload):
    KIND = EventKind.THREAD_SPAWNED
    agent: str
    task: str
    title: str
    cascade: list[str]
    model: str
    priority: int
    prompt: str | None = None
    max_steps: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    # Task graphs: the threads it waited for (it was spawned once they had all ended).
    after: list[str] = field(default_factory=list)
    # Sub-agents: the thread whose spawn_agent call started it, and that call's id (a
    # resumed parent finds the child its interrupted call already made).
    parent: str | None = None
    spawned_by: str | None = None
    # One of the project's planned task copies (not a hand-spawned or sub-agent thread).
    planned: bool = False


@dataclass(frozen=True, slots=True)
class ThreadStateChanged(Payload):
    KIND = EventKind.THREAD_STATE
    state: str
    reason: str = ""
    answer: str | None = None  # on an ending with an answer


@dataclass(frozen=True, slots=True)
class TasksWaiting(Payload):
    KIND = EventKind.TASKS_WAITING
    waiting: dict[str, list[str]]


@dataclass(frozen=True, slots=True)
class PauseRequested(Payload):
    KIND = EventKind.PAUSE_REQUESTED
    requested: bool


@dataclass(frozen=True, slots=True)
class LlmStarted(Payload):
    KIND = EventKind.LLM_STARTED
    step: int
    model: str
    reserved_usd: float
    call: str | None = None
    attempt: int = 0
    prompt_tokens_est: int = 0
    max_tokens: int = 0
    reserved_tokens: int = 0
    guidance: list[str] = field(default_factory=list)
    lane: str | None = None  # a batch lane's call: sent in a batch, at batch prices


@dataclass(frozen=True, slots=True)
class LlmDelta(Payload):
    KIND = EventKind.LLM_DELTA
    text: str
    call: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """A call's token counts; `estimated`: counted by tower, the provider sent none."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0  # read from the provider's prompt cache
    cache_write_tokens: int = 0  # written to it (Anthropic's breakpoints)
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True, slots=True)
class LlmFinished(Payload):
    KIND = EventKind.LLM_FINISHED
    step: int
    model: str
    cost_usd: float
    usage: Usage
    reserved_usd: float
    call: str | None = None
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    price_known: bool = True  # logs before unknown prices were told apart: known
    seconds: float = 0.0
    finish_reason: str | None = None
    # The call's response-cache key ([cache] responses): an identical call later is served
    # this answer (None: not cacheable, or the cache is off).
    key: str | None = None
    # What the provider's prompt cache saved on this call, against every prompt token at
    # the plain input price (negative when writing to the cache cost more than it read).
    saved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class LlmCached(Payload):
    """A call served from the response cache: the answer an identical call (same model,
    messages, tools and sampling settings) got in this database, at `source_session` /
    `source_seq` (its llm_finished). In the conversation it is the call and its reply; it
    costs nothing, and `saved_usd` is what the original call cost."""

    KIND = EventKind.LLM_CACHED
    step: int
    model: str
    key: str
    source_session: str
    source_seq: int
    call: str | None = None
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)  # the original call's, not spent again
    saved_usd: float = 0.0
    guidance: list[str] = field(default_factory=list)  # sent with it, as llm_started's


@dataclass(frozen=True, slots=True)
class LlmFailed(Payload):
    KIND = EventKind.LLM_FAILED
    error: str
    released_usd: float
    call: str | None = None
    step: int = 0
    model: str = ""
    retryable: bool = False
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class LlmLost(Payload):
    """A call a crash cut off, booked at its reservation. Version 2 renamed `usd` to
    `reserved_usd`, the name LLM_STARTED gives the same amount (upcaster below)."""

    KIND = EventKind.LLM_LOST
    VERSION = 2
    reserved_usd: float
    model: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ToolCalled(Payload):
    KIND = EventKind.TOOL_CALLED
    call_id: str
    tool: str
    args: Any
    reason: str = ""
    policy: str | None = None  # the verdict that let it run, when the policy was asked
    rule: str = ""  # the verdict described: the rule that decided, or the default
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResult(Payload):
    KIND = EventKind.TOOL_RESULT
    call_id: str
    tool: str = ""
    ok: bool = True
    result: str = ""


@dataclass(frozen=True, slots=True)
class InboxOpened(Payload):
    """An item for the person; its kind's own fields (tool and args, question, amounts)
    are in `extra`, as the inbox shows them."""

    KIND = EventKind.INBOX_OPENED
    item: str
    kind: str
    cost_so_far: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class InboxClosed(Payload):
    KIND = EventKind.INBOX_CLOSED
    item: str
    resolution: str
    by: str = "human"
    text: str | None = None
    args: dict[str, Any] | None = None
    attention_s: float | None = None  # the person's time on it (from the UI)
    waited_s: float | None = None
    batch: str | None = None  # one key decided several items: the first item's id


@dataclass(frozen=True, slots=True)
class Escalated(Payload):
    KIND = EventKind.ESCALATED
    from_model: str
    to_model: str
    trigger: str = ""


@dataclass(frozen=True, slots=True)
class Compacted(Payload):
    """A thread's older tool results folded (core/compaction.py): in the conversation each
    folded result is replaced, the first by `summary` (or an elision marker), the others by
    a pointer to it. A summary written by a model is that call's cost, booked here."""

    KIND = EventKind.COMPACTED
    folded: list[str]  # the tool call ids whose results were folded
    mode: str  # "summary" | "elide"
    summary: str
    tokens_before: int  # the prompt's tokens (tower's bound) before and after
    tokens_after: int
    window: int  # the model's context window it was kept within
    model: str = ""  # the model that wrote the summary (none: elided)
    cost_usd: float = 0.0
    reserved_usd: float = 0.0  # the summary call's reservation, replaced by its cost
    usage: Usage = field(default_factory=Usage)
    note: str = ""  # why a summary fell back to elision


@dataclass(frozen=True, slots=True)
class BatchChanged(Payload):
    """A lane's batch: submitted (its calls reserved and sent), running at the provider
    (`provider_id`), then completed, failed, expired or cancelled."""

    KIND = EventKind.BATCH
    batch: str
    lane: str
    model: str
    status: str
    calls: list[str] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    provider_id: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class Checked(Payload):
    KIND = EventKind.CHECKED
    passed: bool
    detail: str = ""
    model: str = ""


@dataclass(frozen=True, slots=True)
class BudgetRaised(Payload):
    KIND = EventKind.BUDGET_RAISED
    scope: str
    usd: float | None = None
    tokens: int | None = None
    by: str = "human"


@dataclass(frozen=True, slots=True)
class Comment(Payload):
    KIND = EventKind.COMMENT
    text: str
    by: str = "human"


@dataclass(frozen=True, slots=True)
class PolicySet(Payload):
    KIND = EventKind.POLICY_SET
    policy: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RuleGranted(Payload):
    KIND = EventKind.RULE_GRANTED
    rule: dict[str, Any]
    minutes: float | None = None
    by: str = "human"
    item: str | None = None


@dataclass(frozen=True, slots=True)
class RuleEnded(Payload):
    KIND = EventKind.RULE_ENDED
    rule: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class McpServer(Payload):
    KIND = EventKind.MCP_SERVER
    server: str
    status: str
    detail: str = ""
    tools: list[str] | None = None


TYPES: dict[EventKind, type[Payload]] = {
    t.KIND: t
    for t in (
        SessionStarted,
        SessionEnded,
        SessionResumed,
        ThreadSpawned,
        ThreadStateChanged,
        PauseRequested,
        TasksWaiting,
        LlmStarted,
        LlmDelta,
        LlmFinished,
        LlmCached,
        LlmFailed,
        LlmLost,
        ToolCalled,
        ToolResult,
        InboxOpened,
        InboxClosed,
        Escalated,
        Checked,
        Compacted,
        BatchChanged,
        BudgetRaised,
        Comment,
        PolicySet,
        RuleGranted,
        RuleEnded,
        McpServer,
    )
}

# (kind, version read) → a function turning that version's payload into the next one's.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[EventKind, int], Upcaster] = {}


def _lost_v1(data: dict[str, Any]) -> dict[str, Any]:
    data["reserved_usd"] = data.pop("usd")
    return data


UPCASTERS[(EventKind.LLM_LOST, 1)] = _lost_v1

# A required field's names in older versions: the store checks raw payloads in SQL (before
# any upcaster runs), so an old log is whole when a field is there under its former name.
FORMER_NAMES: dict[tuple[EventKind, str], tuple[str, ...]] = {
    (EventKind.LLM_LOST, "reserved_usd"): ("usd",),
}


def required_fields(kind: EventKind) -> tuple[str, ...]:
    """The fields an event of this kind cannot be read without (no default)."""
    return tuple(
        f.name
        for f in dataclasses.fields(TYPES[kind])
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name != "extra"
    )


def stored_names(kind: EventKind) -> tuple[tuple[str, ...], ...]:
    """Per required field, the names it may be stored under (now, then in older versions)."""
    return tuple((f, *FORMER_NAMES.get((kind, f), ())) for f in required_fields(kind))


_FIELDS: dict[type[Payload], frozenset[str]] = {
    t: frozenset(f.name for f in dataclasses.fields(t) if f.name != "extra") for t in TYPES.values()
}


def upcast(kind: EventKind, data: dict[str, Any]) -> dict[str, Any]:
    """The payload in its type's current shape (the chain of upcasters from its "v")."""
    version = data.get("v", 1)
    current = TYPES[kind].VERSION
    while version < current:
        data = UPCASTERS[(kind, version)](dict(data))
        version += 1
    return data


P = TypeVar("P", bound=Payload)


def payload_as(ev: Event, cls: type[P]) -> P:
    """The typed payload of an event its reader knows the kind of (checked: TypeError if
    it is another kind), so the reader's type checker knows its fields."""
    p = payload_of(ev)
    if not isinstance(p, cls):
        raise TypeError(f"a {ev.kind} event has no {cls.__name__} payload")
    return p


def payload_of(ev: Event) -> Payload:
    """The typed view of an event's payload. KeyError/TypeError on a damaged one (a field
    it cannot do without is missing); the store checks logs for that before folding.
    Decoded once per event: later readers get the same object."""
    if ev.typed is not None:
        return ev.typed
    ev.typed = _decode(ev)
    return ev.typed


def _decode(ev: Event) -> Payload:
    cls = TYPES[ev.kind]
    data = upcast(ev.kind, ev.payload) if "v" in ev.payload or cls.VERSION > 1 else ev.payload
    for name in _REQUIRED[cls]:
        if name not in data:
            raise KeyError(name)  # as a dict read would: "payload has no field ..."
    known = _FIELDS[cls]
    args = {k: v for k, v in data.items() if k in known}
    if cls is LlmFinished or (cls in (LlmCached, Compacted) and "usage" in data):
        args["usage"] = Usage(**{k: v for k, v in data["usage"].items() if k in _USAGE})
    extra = {k: v for k, v in data.items() if k not in known and k != "v"}
    return cls(**args, extra=extra)


_USAGE = frozenset(f.name for f in dataclasses.fields(Usage))
_USAGE_NAMES = tuple(f.name for f in dataclasses.fields(Usage))
_NAMES: dict[type[Payload], tuple[str, ...]] = {
    t: tuple(f.name for f in dataclasses.fields(t) if f.name != "extra") for t in TYPES.values()
}
_OPTIONAL: dict[type[Payload], frozenset[str]] = {
    t: frozenset(f.name for f in dataclasses.fields(t) if f.default is None) for t in TYPES.values()
}
_REQUIRED = {t: required_fields(t.KIND) for t in TYPES.values()}
