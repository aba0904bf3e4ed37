"""Situations: the inbox seen as causes, not items.

When one cause blocks many threads (the session budget ran out, the same tool call asked by
twenty threads, an MCP server that went down), the person should see it once and settle it
with one key. `situations(state)` groups the open inbox items by cause; every item belongs
to exactly one situation, and a situation of one item is just that item.

It also decides which items are *routine*: those a rule could decide (a tool approval that a
time-boxed grant would cover) or that cost little (a budget raise under a threshold). Once the
person's attention budget (`[budget] human_minutes`) is spent, routine items wait in a digest
instead of interrupting.

Pure functions over TowerState: no I/O, no Textual, easy to test.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

from tower.core.events import InboxKind, ThreadState
from tower.core.state import InboxItem, ThreadView, TowerState

GROUP_PREFIX = "g:"
DIGEST_KEY = "g:digest"
MCP_DOWN = frozenset({"crashed", "failed", "stopped"})


@dataclass(frozen=True, slots=True)
class Situation:
    """One cause and the open items it explains (oldest first)."""

    key: str  # an item id for a single item, "g:…" for a group
    kind: InboxKind
    cause: str  # one line: what happened
    items: tuple[str, ...]
    threads: tuple[str, ...]
    created: float  # when its oldest item opened
    resolve: str = ""  # what resolving it would cost or do
    suggest_usd: float | None = None  # for budget groups: the raise that settles it
    routine: bool = False
    short: str = ""  # the cause in a few words, for a list row

    @property
    def row_text(self) -> str:
        return self.short or self.cause

    @property
    def is_group(self) -> bool:
        return self.key.startswith(GROUP_PREFIX)


def is_routine(item: InboxItem, routine_usd: float) -> bool:
    """An item a rule could decide, or one under the cost threshold."""
    d = item.data
    if item.kind is InboxKind.APPROVAL:
        return bool(d.get("suggest")) and not d.get("interrupted")
    if item.kind is InboxKind.BUDGET:
        return d.get("resource") == "usd" and float(d.get("suggest_usd") or 0.0) <= routine_usd
    return False


def _call_key(item: InboxItem) -> str:
    d = item.data
    args = json.dumps(d.get("args") or {}, sort_keys=True, default=str)
    return f"{d.get('tool')}\0{args}"


def _mcp_server(item: InboxItem, state: TowerState) -> str | None:
    tool = str(item.data.get("tool") or "")
    server, sep, _rest = tool.partition("__")
    if sep and state.mcp.get(server, {}).get("status") in MCP_DOWN:
        return server
    return None


def measured_cost_per_thread(state: TowerState) -> float | None:
    """Mean cost of the threads that finished their task (None before the first)."""
    costs = [t.cost_usd for t in state.threads.values() if t.state is ThreadState.DONE]
    return sum(costs) / len(costs) if costs else None


def _family(task: str) -> str:
    """A repeated task's copies ("screen-7") share the family of their task ("screen")."""
    return re.sub(r"-\d+$", "", task)


def session_budget_need(state: TowerState, members: list[InboxItem]) -> tuple[float, float | None]:
    """What raising the session budget must add so the stopped and queued threads finish.

    Each thread is expected to cost what finished threads of its own task cost (the overall
    mean for a task none finished yet); a stopped thread needs that minus what it already
    spent; and the last calls in flight reserve their worst case (each stopped item says how
    much), so that is added too. Returns (usd to add, mean expected cost per thread), or
    (0, None) before any thread finished (the caller falls back to the items' suggestions).
    """
    overall = measured_cost_per_thread(state)
    if overall is None:
        return 0.0, None
    by_family: dict[str, list[float]] = {}
    for view in state.threads.values():
        if view.state is ThreadState.DONE:
            by_family.setdefault(_family(view.task or view.id), []).append(view.cost_usd)
    means = {f: sum(c) / len(c) for f, c in by_family.items()}

    def expected(view: ThreadView) -> float:
        return means.get(_family(view.task or view.id), overall)

    stopped = {i.thread for i in members}
    queued = [v for v in state.threads.values() if v.state is ThreadState.QUEUED]
    need = sum(expected(v) for v in queued)
    estimates = [expected(v) for v in queued]
    for tid in stopped:
        stopped_view = state.threads.get(tid)
        if stopped_view is not None:
            need += max(expected(stopped_view) - stopped_view.cost_usd, 0.0)
            estimates.append(expected(stopped_view))
    need += sum(float(i.data.get("need_usd") or 0.0) for i in members)  # calls in flight
    b = state.budget
    headroom = (b.limit_usd or 0.0) - b.spent_usd - b.reserved_usd
    per = sum(estimates) / len(estimates) if estimates else overall
    return max(need - max(headroom, 0.0), 0.0), per


def _round_up(x: float) -> float:
    """A raise people can read: two significant digits, rounded up, never below the need."""
    if x <= 0:
        return 0.0
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / step - 1e-9) * step, 8)


def situations(
    state: TowerState,
    *,
    human_minutes_cap: float | None = None,
    routine_usd: float = 0.01,
) -> list[Situation]:
    """The open inbox, grouped by cause; oldest situation first, the digest last."""
    items = sorted(state.inbox.values(), key=lambda i: (i.created, i.thread, i.id))
    digest_on = human_minutes_cap is not None and state.human_seconds / 60 >= human_minutes_cap
    buckets: dict[str, list[InboxItem]] = {}
    for item in items:
        if digest_on and is_routine(item, routine_usd):
            key = DIGEST_KEY
        elif item.kind is InboxKind.BUDGET and item.data.get("scope") == "subtree":
            # Stopped by an ancestor's cap: one cause per ancestor (one raise wakes them all).
            key = f"g:budget:subtree:{item.data.get('resource', 'usd')}:{item.data.get('account')}"
        elif item.kind is InboxKind.BUDGET:
            key = f"g:budget:{item.data.get('scope', 'thread')}:{item.data.get('resource', 'usd')}"
        elif item.kind is InboxKind.APPROVAL and (server := _mcp_server(item, state)):
            key = f"g:mcp:{server}"
        elif item.kind is InboxKind.APPROVAL and not item.data.get("interrupted"):
            key = "g:call:" + _call_key(item)
        elif item.kind is InboxKind.ESCALATION:
            key = f"g:handoff:{item.data.get('reason', '')}"
        else:
            key = item.id
        buckets.setdefault(key, []).append(item)
    out: list[Situation] = []
    digest: Situation | None = None
    for key, members in buckets.items():
        sit = _situation(state, key, members, routine_usd)
        if key == DIGEST_KEY:
            digest = sit
        else:
            out.append(sit)
    out.sort(key=lambda s: s.created)
    if digest is not None:
        out.append(digest)
    return out


def _situation(
    state: TowerState, key: str, members: list[InboxItem], routine_usd: float
) -> Situation:
    first = members[0]
    ids = tuple(i.id for i in members)
    threads = tuple(dict.fromkeys(i.thread for i in members))
    routine = all(is_routine(i, routine_usd) for i in members)
    if key == DIGEST_KEY:
        return Situation(
            key,
            first.kind,
            f"{len(ids)} routine item(s) held: your attention budget is spent",
            ids,
            threads,
            first.created,
            "a approves or raises them all · d denies them all · enter lists them",
            routine=True,
            short="digest: routine items held (attention budget spent)",
        )
    if not key.startswith(GROUP_PREFIX) or (len(members) == 1 and "budget:session" not in key):
        # A cause with one item is just that item.
        return Situation(first.id, first.kind, "", ids, threads, first.created, routine=routine)
    sit = _group(state, key, members, routine)
    if len(members) == 1:  # one thread stopped by the session budget: the item, priced
        sit = replace(sit, key=first.id)
    return sit


def _group(state: TowerState, key: str, members: list[InboxItem], routine: bool) -> Situation:
    first = members[0]
    ids = tuple(i.id for i in members)
    threads = tuple(dict.fromkeys(i.thread for i in members))
    n = len(ids)
    if key.startswith("g:budget:session"):
        resource = first.data.get("resource", "usd")
        suggested = max(float(i.data.get("suggest_usd") or 0.0) for i in members)
        if resource != "usd":
            return Situation(
                key,
                InboxKind.BUDGET,
                f"{n} thread(s) stopped by the session token budget",
                ids,
                threads,
                first.created,
                "a raises the session's token cap as suggested · b by an amount · d declines all",
                short="session token budget stop",
            )
        need, per = session_budget_need(state, members)
        raise_usd = _round_up(max(need, suggested))
        if per is not None:
            queued = state.count(ThreadState.QUEUED)
            resolve = (
                f"+${raise_usd:.{_places(raise_usd)}f} lets the {n} stopped"
                + (f" and {queued} queued" if queued else "")
                + f" finish at the measured ${per:.{_places(per)}f} per thread"
            )
        else:
            resolve = (
                f"+${raise_usd:.{_places(raise_usd)}f} lets each stopped thread make its next call"
            )
        return Situation(
            key,
            InboxKind.BUDGET,
            f"{n} thread(s) stopped by the session budget",
            ids,
            threads,
            first.created,
            resolve,
            suggest_usd=raise_usd,
            routine=routine,
            short=f"session budget · +${raise_usd:.{_places(raise_usd)}f}",
        )
    if key.startswith("g:budget:subtree:"):
        account = str(first.data.get("account"))
        suggested = max(float(i.data.get("suggest_usd") or 0.0) for i in members)
        what = "token budget" if first.data.get("resource") == "tokens" else "budget"
        return Situation(
            key,
            InboxKind.BUDGET,
            f"{n} sub-agent(s) stopped by {account}'s subtree {what}",
            ids,
            threads,
            first.created,
            f"a raises {account}'s cap as suggested (one raise wakes them all) · b by an amount"
            " · d declines all",
            suggest_usd=suggested,
            routine=routine,
            short=f"{account}'s subtree {what}",
        )
    if key.startswith("g:budget:thread"):
        total = sum(float(i.data.get("suggest_usd") or 0.0) for i in members)
        return Situation(
            key,
            InboxKind.BUDGET,
            f"{n} threads reached their own budget",
            ids,
            threads,
            first.created,
            f"a raises each as suggested (${total:.{_places(total)}f} in all) · d declines all",
            suggest_usd=total,
            routine=routine,
            short="each reached its own budget",
        )
    if key.startswith("g:mcp:"):
        server = key.removeprefix("g:mcp:")
        status = state.mcp.get(server, {}).get("status", "down")
        return Situation(
            key,
            InboxKind.APPROVAL,
            f"{n} calls to MCP server {server}, which is {status}",
            ids,
            threads,
            first.created,
            "d denies them all (the agents are told the server is down) · a approves all",
            routine=routine,
            short=f"MCP server {server} is {status}",
        )
    if key.startswith("g:handoff:"):
        reason = key.removeprefix("g:handoff:") or "handed to you"
        return Situation(
            key,
            InboxKind.ESCALATION,
            f"{n} threads handed to you: {reason}",
            ids,
            threads,
            first.created,
            "",
            routine=routine,
            short=f"handed to you: {reason}",
        )
    tool = first.data.get("tool")
    args: dict[str, Any] = first.data.get("args") or {}
    target = args.get("path") or args.get("command") or next((str(v) for v in args.values()), "")
    return Situation(
        key,
        InboxKind.APPROVAL,
        f"the same call from {n} threads: {tool} {target}".rstrip(),
        ids,
        threads,
        first.created,
        "",
        routine=routine,
        short=f"same call: {tool} {target}".rstrip(),
    )


def _places(x: float) -> int:
    """Enough decimals that a small amount never rounds to a different one ($0.085, $0.0007)."""
    if x == 0 or x >= 1:
        return 2
    places = 2
    while places < 6 and round(x, places) != round(x, 6):
        places += 1
    return places
