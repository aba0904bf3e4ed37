"""TowerState and the reducer that folds events into it.

`apply` is deterministic and does no I/O; live mode and replay call the same function on the
same events, so what the screen shows is exactly what the log says. It updates the state in
place (copying thousands of threads per event would make a million-event replay crawl).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from tower.core import payloads as pl
from tower.core.events import (
    ENDED_STATES,
    Event,
    InboxKind,
    Resolution,
    ThreadState,
)
from tower.core.payloads import payload_of

TAIL_CHARS = 4000


def _less(amount: float, minus: float) -> float:
    """Subtracts a released reservation; float residue below a billionth is zero."""
    left = amount - minus
    return left if left > 1e-12 else 0.0


@dataclass(slots=True)
class ThreadView:
    id: str
    agent: str
    task: str
    title: str
    cascade: list[str]
    model: str
    priority: int
    created: float
    budget_usd: float | None = None
    budget_tokens: int | None = None
    state: ThreadState = ThreadState.QUEUED
    reason: str = ""
    answer: str | None = None
    step: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    reserved_usd: float = 0.0
    lost_usd: float = 0.0  # calls a crash cut off, booked at their reservation
    estimated_tokens: int = 0  # counted by tower: the provider sent no usage
    saved_usd: float = 0.0  # what the provider's prompt cache saved its calls
    cache_hits: int = 0  # calls answered from the response cache
    compactions: int = 0  # times its older tool results were folded
    batch: str | None = None  # the batch its call waits in (a batch lane), and since when
    batch_since: float | None = None
    started: float | None = None
    ended: float | None = None
    tail: str = ""
    current_tool: str | None = None
    pending: int = 0
    errors: int = 0
    escalations: int = 0
    tool_calls: int = 0
    human_seconds: float = 0.0  # the person's own time on its items (shown → decided)
    blocked_seconds: float = 0.0  # how long it sat blocked waiting for a person
    items: int = 0  # inbox items it opened (times it needed the human)
    checked: bool | None = None  # the last self-check: None when the task has none
    unpriced: bool = False  # some call's model has no known price: its cost is a floor
    check_detail: str = ""
    # A pause asked for and not withdrawn: the thread pauses at its next checkpoint (a
    # running one shows "pausing" until then) and is not started from the queue.
    pause_requested: bool = False
    after: list[str] = field(default_factory=list)  # the threads it waited for (task graphs)
    # Sub-agents: its parent, how deep it sits, its children, and what its whole subtree
    # (itself and every descendant) has spent, lost calls included: a parent's row and the
    # budget bar show that, since a parent's cap bounds its whole subtree.
    parent: str | None = None
    depth: int = 0
    children: list[str] = field(default_factory=list)
    subtree_usd: float = 0.0
    subtree_tokens: int = 0


@dataclass(slots=True)
class InboxItem:
    id: str
    thread: str
    kind: InboxKind
    created: float
    data: dict[str, Any]


@dataclass(slots=True)
class BudgetView:
    limit_usd: float | None = None
    limit_tokens: int | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    tokens: int = 0
    unpriced_tokens: int = 0  # used by models with no known price (counted, not costed)
    lost_usd: float = 0.0  # possibly billed: calls lost in a crash, at their reservation
    estimated_tokens: int = 0  # counted with the model's tokenizer: no usage was reported
    saved_usd: float = 0.0  # saved by the providers' prompt caches, against plain prices
    cache_hits: int = 0  # calls answered from the response cache, at $0
    cache_saved_usd: float = 0.0  # ...and what those answers had cost when first paid for


@dataclass(slots=True)
class TowerState:
    session: str = ""
    project: str = ""
    started: float = 0.0
    ended: float | None = None
    end_reason: str | None = None
    threads: dict[str, ThreadView] = field(default_factory=dict)
    inbox: dict[str, InboxItem] = field(default_factory=dict)  # insertion order = oldest first
    budget: BudgetView = field(default_factory=BudgetView)
    events: int = 0
    last_seq: int = 0
    last_ts: float = 0.0
    human_seconds: float = 0.0  # attention: the person's time deciding (item shown → key)
    blocked_seconds: float = 0.0  # thread-seconds spent blocked waiting for a person
    decisions: int = 0
    policy: list[dict[str, Any]] = field(default_factory=list)  # the project's rules
    grants: dict[str, dict[str, Any]] = field(default_factory=dict)  # time-boxed, by id
    mcp: dict[str, dict[str, Any]] = field(default_factory=dict)  # server → status, tools
    # Task graphs: tasks not spawned yet, by the thread id they will get → what they wait for.
    waiting_tasks: dict[str, list[str]] = field(default_factory=dict)
    # A large project's task copies are spawned as slots free: how many it plans, and how
    # many of them are threads already (the rest: not yet started).
    tasks_planned: int = 0
    tasks_spawned: int = 0
    # A batch lane's batches not ended yet: id -> {model, status, calls, since}.
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Threads by state, kept by the reducer: the bar, `tower ls` and the end-of-run test ask
    # every second, and counting a million threads each time would be their whole cost.
    tally: dict[ThreadState, int] = field(default_factory=dict)

    @property
    def tasks_unstarted(self) -> int:
        """The project's task copies not spawned yet (nor waiting on a task graph)."""
        return max(self.tasks_planned - self.tasks_spawned - len(self.waiting_tasks), 0)

    def count(self, state: ThreadState) -> int:
        return self.tally.get(state, 0)

    def recount(self) -> None:
        """Counts the threads by state afresh (a state built from a snapshot, or by hand)."""
        self.tally = {}
        for view in self.threads.values():
            self.tally[view.state] = self.tally.get(view.state, 0) + 1

    @property
    def all_ended(self) -> bool:
        return not any(n for s, n in self.tally.items() if s not in ENDED_STATES)


def subtree(state: TowerState, tid: str) -> list[str]:
    """A thread and its descendants, depth first in spawn order (the tree's row order)."""
    out: list[str] = []
    stack = [tid]
    while stack:
        cur = stack.pop()
        view = state.threads.get(cur)
        if view is None:
            continue
        out.append(cur)
        stack.extend(reversed(view.children))
    return out


def root_of(state: TowerState, tid: str) -> str:
    """The top of a thread's tree (itself when it has no parent)."""
    view = state.threads.get(tid)
    while view is not None and view.parent is not None and view.parent in state.threads:
        view = state.threads[view.parent]
    return view.id if view is not None else tid


def _append_tail(view: ThreadView, text: str) -> None:
    tail = view.tail + text
    view.tail = tail[-TAIL_CHARS:] if len(tail) > TAIL_CHARS else tail


def _short(args: Any, limit: int = 60) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items()) if isinstance(args, dict) else str(args)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def apply(state: TowerState, ev: Event) -> TowerState:
    """Folds one event into the state and returns it: the typed payload goes to its kind's
    own function below."""
    state.events += 1
    state.last_seq = ev.seq
    state.last_ts = ev.ts
    data = payload_of(ev)
    view = state.threads.get(ev.thread) if ev.thread is not None else None
    handler = _APPLY.get(type(data))
    if handler is not None:  # COMMENT changes nothing the overview shows
        handler(state, ev, data, view)
    return state


def _llm_delta(state: TowerState, ev: Event, p: pl.LlmDelta, view: ThreadView | None) -> None:
    if view is not None:
        _append_tail(view, p.text)


def _llm_started(state: TowerState, ev: Event, p: pl.LlmStarted, view: ThreadView | None) -> None:
    if view is not None:
        view.step = p.step
        view.model = p.model
        view.reserved_usd += p.reserved_usd
        view.current_tool = None
        if view.tail:
            _append_tail(view, "\n")
    state.budget.reserved_usd += p.reserved_usd


def _llm_finished(state: TowerState, ev: Event, p: pl.LlmFinished, view: ThreadView | None) -> None:
    b = state.budget
    tokens = p.usage.total_tokens
    b.spent_usd += p.cost_usd
    b.tokens += tokens
    b.saved_usd += p.saved_usd
    b.reserved_usd = _less(b.reserved_usd, p.reserved_usd)
    if not p.price_known:
        b.unpriced_tokens += tokens
    if p.usage.estimated:
        b.estimated_tokens += tokens
    if view is not None:
        view.cost_usd += p.cost_usd
        view.tokens += tokens
        view.saved_usd += p.saved_usd
        if p.usage.estimated:
            view.estimated_tokens += tokens
        if not p.price_known:
            view.unpriced = True
        view.reserved_usd = _less(view.reserved_usd, p.reserved_usd)
        _add_to_subtree(state, view, p.cost_usd, tokens)


def _llm_cached(state: TowerState, ev: Event, p: pl.LlmCached, view: ThreadView | None) -> None:
    state.budget.cache_hits += 1
    state.budget.cache_saved_usd += p.saved_usd
    if view is not None:
        view.step = p.step
        view.model = p.model
        view.current_tool = None
        view.cache_hits += 1
        if p.text:
            _append_tail(view, ("\n" if view.tail else "") + p.text)


def _compacted(state: TowerState, ev: Event, p: pl.Compacted, view: ThreadView | None) -> None:
    """A fold of older tool results; a summary's call is spent like any call."""
    b = state.budget
    tokens = p.usage.total_tokens
    b.spent_usd += p.cost_usd
    b.tokens += tokens
    if view is not None:
        view.compactions += 1
        view.cost_usd += p.cost_usd
        view.tokens += tokens
        if p.cost_usd or tokens:
            _add_to_subtree(state, view, p.cost_usd, tokens)


def _batch(state: TowerState, ev: Event, p: pl.BatchChanged, view: ThreadView | None) -> None:
    ended = p.status in ("completed", "failed", "expired", "cancelled")
    if ended:
        state.batches.pop(p.batch, None)
    else:
        entry = state.batches.setdefault(p.batch, {"since": ev.ts})
        entry.update(model=p.model, status=p.status, calls=len(p.calls), lane=p.lane)
    for tid in p.threads:
        v = state.threads.get(tid)
        if v is None:
            continue
        if ended:
            if v.batch == p.batch:
                v.batch, v.batch_since = None, None
        elif v.batch != p.batch:
            v.batch, v.batch_since = p.batch, ev.ts


def _llm_failed(state: TowerState, ev: Event, p: pl.LlmFailed, view: ThreadView | None) -> None:
    state.budget.reserved_usd = _less(state.budget.reserved_usd, p.released_usd)
    if view is not None:
        view.reserved_usd = _less(view.reserved_usd, p.released_usd)
        if p.error != "cancelled":
            view.errors += 1
            _append_tail(view, f"\n[error] {p.error}")


def _llm_lost(state: TowerState, ev: Event, p: pl.LlmLost, view: ThreadView | None) -> None:
    state.budget.reserved_usd = _less(state.budget.reserved_usd, p.reserved_usd)
    state.budget.lost_usd += p.reserved_usd
    if view is not None:
        view.reserved_usd = _less(view.reserved_usd, p.reserved_usd)
        view.lost_usd += p.reserved_usd
        _add_to_subtree(state, view, p.reserved_usd, 0)
        _append_tail(view, f"\n[lost in a crash: possibly billed ${p.reserved_usd:.6f}]")


def _tool_called(state: TowerState, ev: Event, p: pl.ToolCalled, view: ThreadView | None) -> None:
    if view is not None:
        view.current_tool = f"{p.tool}({_short(p.args)})"
        view.tool_calls += 1


def _tool_result(state: TowerState, ev: Event, p: pl.ToolResult, view: ThreadView | None) -> None:
    if view is not None:
        view.current_tool = None


def _thread_state(
    state: TowerState, ev: Event, p: pl.ThreadStateChanged, view: ThreadView | None
) -> None:
    if view is None:
        return
    new = ThreadState(p.state)
    _recount(state, view.state, new)
    view.state = new
    view.reason = sys.intern(p.reason) if len(p.reason) <= 64 else p.reason  # "finished"…
    if new is ThreadState.RUNNING and view.started is None:
        view.started = ev.ts
    if new in ENDED_STATES:
        view.ended = ev.ts
        view.current_tool = None
        if p.answer is not None:
            view.answer = p.answer


def _pause_requested(
    state: TowerState, ev: Event, p: pl.PauseRequested, view: ThreadView | None
) -> None:
    if view is not None:
        view.pause_requested = p.requested


def _inbox_opened(state: TowerState, ev: Event, p: pl.InboxOpened, view: ThreadView | None) -> None:
    # The item keeps the recorded payload whole: the inbox shows its kind's own fields.
    item = InboxItem(p.item, ev.thread or "", InboxKind(p.kind), ev.ts, ev.payload)
    state.inbox[item.id] = item
    if view is not None:
        view.pending += 1
        view.items += 1


def _inbox_closed(state: TowerState, ev: Event, p: pl.InboxClosed, view: ThreadView | None) -> None:
    item = state.inbox.pop(p.item, None)
    if item is None:
        return
    if view is not None:
        view.pending = max(view.pending - 1, 0)
    if p.by == "human" and p.resolution != Resolution.DROPPED:
        # Two different costs: how long the thread was blocked on the person, and how long
        # the person actually spent deciding (measured by the UI).
        waited = max(ev.ts - item.created, 0.0)
        spent = float(p.attention_s or 0.0)
        state.blocked_seconds += waited
        state.human_seconds += spent
        if p.batch in (None, p.item):  # one key on a group: one decision
            state.decisions += 1
        if view is not None:
            view.blocked_seconds += waited
            view.human_seconds += spent


def _escalated(state: TowerState, ev: Event, p: pl.Escalated, view: ThreadView | None) -> None:
    if view is not None:
        if p.to_model != "human":  # handed to the human: the model stays the same
            view.model = p.to_model
        view.escalations += 1


def _budget_raised(
    state: TowerState, ev: Event, p: pl.BudgetRaised, view: ThreadView | None
) -> None:
    if p.scope == "session":
        b = state.budget
        if p.usd:
            b.limit_usd = (b.limit_usd or 0.0) + p.usd
        if p.tokens:
            b.limit_tokens = (b.limit_tokens or 0) + p.tokens
    elif view is not None:
        if p.usd:
            view.budget_usd = (view.budget_usd or 0.0) + p.usd
        if p.tokens:
            view.budget_tokens = (view.budget_tokens or 0) + p.tokens


def _recount(state: TowerState, old: ThreadState | None, new: ThreadState) -> None:
    tally = state.tally
    if old is not None:
        left = tally[old] - 1
        if left:
            tally[old] = left
        else:
            del tally[old]  # as recount() has it: no state counted at zero
    tally[new] = tally.get(new, 0) + 1


def _thread_spawned(
    state: TowerState, ev: Event, p: pl.ThreadSpawned, view: ThreadView | None
) -> None:
    # Spawned again under one id (never, by the supervisor's own rule): the newer counts.
    _recount(state, view.state if view is not None else None, ThreadState.QUEUED)
    state.threads[ev.thread or ""] = ThreadView(
        id=ev.thread or "",
        # Names a hundred thousand threads share are held once, not once a thread.
        agent=sys.intern(p.agent),
        task=p.task,
        title=p.title,
        cascade=[sys.intern(m) for m in p.cascade],
        model=sys.intern(p.model),
        priority=p.priority,
        created=ev.ts,
        budget_usd=p.budget_usd,
        budget_tokens=p.budget_tokens,
        after=list(p.after),
    )
    state.waiting_tasks.pop(ev.thread or "", None)
    if p.planned:
        state.tasks_spawned += 1
    parent = state.threads.get(p.parent) if p.parent is not None else None
    if parent is not None:
        child = state.threads[ev.thread or ""]
        child.parent = parent.id
        child.depth = parent.depth + 1
        parent.children.append(child.id)


def _add_to_subtree(state: TowerState, view: ThreadView, usd: float, tokens: int) -> None:
    """Spending of a thread counts in its own subtree and in every ancestor's."""
    node: ThreadView | None = view
    while node is not None:
        node.subtree_usd += usd
        node.subtree_tokens += tokens
        node = state.threads.get(node.parent) if node.parent is not None else None


def _tasks_waiting(
    state: TowerState, ev: Event, p: pl.TasksWaiting, view: ThreadView | None
) -> None:
    state.waiting_tasks.update({tid: list(deps) for tid, deps in p.waiting.items()})


def _session_started(
    state: TowerState, ev: Event, p: pl.SessionStarted, view: ThreadView | None
) -> None:
    state.session = p.session
    state.project = p.project
    state.started = ev.ts
    state.budget.limit_usd = p.budget_usd
    state.budget.limit_tokens = p.budget_tokens
    state.policy = list(p.policy or [])
    state.tasks_planned = p.tasks_planned


def _session_ended(
    state: TowerState, ev: Event, p: pl.SessionEnded, view: ThreadView | None
) -> None:
    state.ended = ev.ts
    state.end_reason = p.reason


def _session_resumed(
    state: TowerState, ev: Event, p: pl.SessionResumed, view: ThreadView | None
) -> None:
    state.ended = None
    state.end_reason = None
    # Batches out at the crash are gone with it (their calls are booked as lost): no thread
    # waits in one any more.
    if state.batches:
        for v in state.threads.values():
            v.batch, v.batch_since = None, None
        state.batches.clear()


def _checked(state: TowerState, ev: Event, p: pl.Checked, view: ThreadView | None) -> None:
    if view is None:
        return
    view.checked = bool(p.passed)
    view.check_detail = str(p.detail)
    verdict = "passed" if p.passed else "failed"
    note = f" {p.detail}" if p.detail and p.detail != verdict else ""
    _append_tail(view, f"\n[check {verdict}]{note}")


def _policy_set(state: TowerState, ev: Event, p: pl.PolicySet, view: ThreadView | None) -> None:
    state.policy = list(p.policy or [])


def _rule_granted(state: TowerState, ev: Event, p: pl.RuleGranted, view: ThreadView | None) -> None:
    state.grants[p.rule["id"]] = p.rule


def _rule_ended(state: TowerState, ev: Event, p: pl.RuleEnded, view: ThreadView | None) -> None:
    state.grants.pop(p.rule, None)


def _mcp_server(state: TowerState, ev: Event, p: pl.McpServer, view: ThreadView | None) -> None:
    entry = state.mcp.setdefault(p.server, {"tools": [], "restarts": 0})
    entry["status"] = p.status
    entry["detail"] = p.detail
    if p.tools is not None:
        entry["tools"] = list(p.tools)
    if p.status == "restarted":
        entry["restarts"] += 1


_APPLY: dict[type[pl.Payload], Callable[[TowerState, Event, Any, ThreadView | None], None]] = {
    pl.LlmDelta: _llm_delta,
    pl.LlmStarted: _llm_started,
    pl.LlmFinished: _llm_finished,
    pl.LlmCached: _llm_cached,
    pl.Compacted: _compacted,
    pl.BatchChanged: _batch,
    pl.LlmFailed: _llm_failed,
    pl.LlmLost: _llm_lost,
    pl.ToolCalled: _tool_called,
    pl.ToolResult: _tool_result,
    pl.ThreadStateChanged: _thread_state,
    pl.PauseRequested: _pause_requested,
    pl.TasksWaiting: _tasks_waiting,
    pl.InboxOpened: _inbox_opened,
    pl.InboxClosed: _inbox_closed,
    pl.Escalated: _escalated,
    pl.BudgetRaised: _budget_raised,
    pl.ThreadSpawned: _thread_spawned,
    pl.SessionStarted: _session_started,
    pl.SessionEnded: _session_ended,
    pl.SessionResumed: _session_resumed,
    pl.Checked: _checked,
    pl.PolicySet: _policy_set,
    pl.RuleGranted: _rule_granted,
    pl.RuleEnded: _rule_ended,
    pl.McpServer: _mcp_server,
}


def fold(events: Iterable[Event], state: TowerState | None = None) -> TowerState:
    """Folds events from scratch (or onto a snapshot)."""
    state = state or TowerState()
    for ev in events:
        apply(state, ev)
    return state


def state_to_dict(state: TowerState) -> dict[str, Any]:
    """The whole reduced state as plain JSON-able data (replay's --print-state, comparisons)."""
    out = asdict(state)
    del out["tally"]  # a count the reducer keeps of `threads`, not state of its own
    out["threads"] = {tid: {**asdict(v), "state": str(v.state)} for tid, v in state.threads.items()}
    out["inbox"] = [{**asdict(i), "kind": str(i.kind)} for i in state.inbox.values()]
    return out


# The shape of TowerState in snapshots. Bump it when a field changes meaning or a new one
# would be wrong at its default for events already folded: snapshots of another version are
# not read (replay folds from the start instead), never misread.
STATE_VERSION = 5  # 3: waiting_tasks (task graphs); 4: sub-agent trees; 5: tasks fed lazily


def snapshot_of(state: TowerState) -> dict[str, Any]:
    """A snapshot for the log: the state as data, with the version of its shape."""
    return {"state_version": STATE_VERSION, **state_to_dict(state)}


def state_from_snapshot(data: dict[str, Any]) -> TowerState | None:
    """The state a snapshot holds, or None if it was written for another shape."""
    if data.get("state_version") != STATE_VERSION:
        return None
    try:
        return state_from_dict({k: v for k, v in data.items() if k != "state_version"})
    except (TypeError, KeyError, ValueError):
        return None  # a shape this version does not know after all: fold instead


def state_from_dict(data: dict[str, Any]) -> TowerState:
    """The inverse of state_to_dict (snapshots for fast seeking)."""
    rest = {k: v for k, v in data.items() if k not in ("threads", "inbox", "budget")}
    state = TowerState(**rest)
    state.budget = BudgetView(**data["budget"])
    state.threads = {
        tid: ThreadView(**{**v, "state": ThreadState(v["state"])})
        for tid, v in data["threads"].items()
    }
    state.inbox = {i["id"]: InboxItem(**{**i, "kind": InboxKind(i["kind"])}) for i in data["inbox"]}
    state.recount()  # a snapshot's own count is not trusted
    return state


def subtree_totals(state: TowerState) -> dict[str, dict[str, float | int]]:
    """Per thread with sub-agents: its subtree's size and spending (summaries, export)."""
    return {
        v.id: {
            "threads": len(subtree(state, v.id)),
            "cost_usd": round(v.subtree_usd, 6),
            "tokens": v.subtree_tokens,
        }
        for v in state.threads.values()
        if v.children
    }


def summary(state: TowerState) -> dict[str, Any]:
    """The run summary shared by `tower run --json` and replay's `--print-state`."""
    threads = {
        "done": state.count(ThreadState.DONE),
        "failed": state.count(ThreadState.FAILED),
        "killed": state.count(ThreadState.KILLED),
    }
    if skipped := state.count(ThreadState.SKIPPED):  # only task graphs skip
        threads["skipped"] = skipped
    out = {
        "session": state.session,
        "threads": threads,
        "cost_usd": round(state.budget.spent_usd, 6),
        "lost_usd": round(state.budget.lost_usd, 6),
        "budget_usd": state.budget.limit_usd,
        "tokens": state.budget.tokens,
        "estimated_tokens": state.budget.estimated_tokens,
        "human_minutes": round(state.human_seconds / 60, 3),
        "blocked_minutes": round(state.blocked_seconds / 60, 3),
        "events": state.events,
    }
    if state.budget.saved_usd:  # only prompt caching saves
        out["saved_by_caching_usd"] = round(state.budget.saved_usd, 6)
    if state.budget.cache_hits:  # only the response cache ([cache] responses) hits
        out["cache_hits"] = state.budget.cache_hits
        out["saved_by_response_cache_usd"] = round(state.budget.cache_saved_usd, 6)
    if trees := subtree_totals(state):  # only sub-agents make trees
        out["subtrees"] = trees
    return out
