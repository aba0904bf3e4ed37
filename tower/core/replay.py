"""Reading a recorded session back: its state at any event, and exports.

Replay folds the stored events through the same reducer as the live run, so the state it
prints is the state the live run had: there is no second implementation to drift.
"""

from __future__ import annotations

import csv
import io
import json
from contextlib import aclosing
from typing import Any, TextIO

from tower.core import payloads as pl
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.payloads import payload_of
from tower.core.state import TowerState, apply, state_from_snapshot, state_to_dict, summary
from tower.core.store import Store, damaged


class ReplayError(Exception):
    """A session or event that cannot be found; the message says which and where."""


async def resolve_session(store: Store, ref: str) -> str:
    """An exact session id, or a prefix that names exactly one session."""
    rows = await store.list_sessions()
    ids = [r.id for r in rows]
    if ref in ids:
        return ref
    matches = [i for i in ids if i.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReplayError(f"session {ref!r} is ambiguous in {store.path}: {', '.join(matches[:5])}")
    raise ReplayError(f"no session {ref!r} in {store.path} (see: tower sessions --db PATH)")


def apply_checked(state: TowerState, ev: Event, session: str, store: Store) -> None:
    """The reducer on one stored event; an event it cannot apply (a field missing or of the
    wrong type) raises DamagedLog naming the session and the event, never a traceback."""
    try:
        apply(state, ev)
    except KeyError as exc:
        why = f"payload has no field {exc.args[0]!r}" if exc.args else "payload lacks a field"
        raise damaged(session, ev.seq, ev.kind, why, store.path) from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise damaged(
            session, ev.seq, ev.kind, f"payload cannot be applied: {exc}", store.path
        ) from None


async def state_at(store: Store, session: str, at: int | None = None) -> TowerState:
    """The reduced state after event `at` (or after the last event).

    Starts from the nearest snapshot at or before `at`, so a seek folds at most a few
    thousand events, whatever the session's length.
    """
    state = TowerState()
    start = 0
    if at is not None:
        snap = await store.snapshot_before(session, at)
        restored = state_from_snapshot(json.loads(snap[1])) if snap is not None else None
        if snap is not None and restored is not None:
            start, state = snap[0], restored
    async with aclosing(store.events(session, start)) as events:
        async for ev in events:
            if at is not None and ev.seq > at:
                break
            apply_checked(state, ev, session, store)
    if at is not None and state.last_seq < at:
        raise ReplayError(
            f"session {session} has {state.last_seq} events; --at {at} is past the end"
        )
    return state


# What the timeline marks, and how: (label, event predicate).
MARK_KINDS = ("approval", "escalation", "budget", "failure")


def mark_of(ev: Event) -> str | None:
    """The timeline mark an event makes, if any."""
    p = payload_of(ev)
    if isinstance(p, pl.InboxOpened) and p.kind == InboxKind.APPROVAL:
        return "approval"
    if isinstance(p, pl.InboxOpened) and p.kind == InboxKind.BUDGET:
        return "budget"
    if isinstance(p, pl.Escalated):
        return "escalation"
    if isinstance(p, pl.ThreadStateChanged) and p.state == ThreadState.FAILED:
        return "failure"
    return None


class Replayer:
    """A cursor over a recorded session: step, seek by event or time, the same reducer."""

    def __init__(self, store: Store, session: str) -> None:
        self.store = store
        self.session = session
        self.state = TowerState()
        self.last = 0
        self.first_ts = self.last_ts = 0.0
        self.marks: list[tuple[int, str]] = []

    @property
    def pos(self) -> int:
        return self.state.last_seq

    async def open(self) -> None:
        await self.store.check_log(self.session)  # a damaged log fails here, not mid-scrub
        self.last, self.first_ts, self.last_ts = await self.store.bounds(self.session)
        marks = []
        async with self.store._conn.execute(
            "SELECT seq, ts, kind, thread, payload FROM events"
            " WHERE session = ? AND kind IN (?, ?, ?)"
            " ORDER BY seq",
            (
                self.session,
                str(EventKind.INBOX_OPENED),
                str(EventKind.ESCALATED),
                str(EventKind.THREAD_STATE),
            ),
        ) as cur:
            async for seq, ts, kind, thread, payload in cur:
                mark = mark_of(Event.from_row(seq, ts, kind, thread, payload))
                if mark:
                    marks.append((seq, mark))
        self.marks = marks
        await self.seek(min(1, self.last))

    async def seek(self, seq: int) -> None:
        seq = max(0, min(seq, self.last))
        self.state = await state_at(self.store, self.session, seq) if seq else TowerState()

    async def forward(self, count: int = 1, until_ts: float | None = None) -> list[Any]:
        """Applies up to `count` next events (stopping past `until_ts`); returns them."""
        applied = []
        async with aclosing(self.store.events(self.session, self.pos, count)) as events:
            async for ev in events:
                if until_ts is not None and ev.ts > until_ts:
                    break
                apply_checked(self.state, ev, self.session, self.store)
                applied.append(ev)
        return applied

    async def seek_time(self, ts: float) -> None:
        await self.seek(await self.store.seq_at_time(self.session, ts))


def print_state(state: TowerState, at: int | None) -> dict[str, Any]:
    """`replay --print-state --json`: the run summary's fields, the position, the full state."""
    return {
        **summary(state),
        "at": state.last_seq if at is None else at,
        "state": state_to_dict(state),
    }


async def export_jsonl(store: Store, session: str, out: TextIO) -> int:
    """Every event, one JSON object a line, in order. Returns the number written."""
    await store.check_log(session)  # nothing is written for a damaged log
    n = 0
    async for ev in store.events(session):
        out.write(json.dumps(ev.to_dict(), ensure_ascii=False) + "\n")
        n += 1
    return n


CSV_FIELDS = [
    "thread",
    "agent",
    "task",
    "title",
    "model",
    "outcome",
    "reason",
    "steps",
    "tool_calls",
    "tokens",
    "estimated_tokens",
    "cost_usd",
    "errors",
    "escalations",
    "lost_usd",
    "human_minutes",
    "blocked_minutes",
    "started",
    "ended",
    # Sub-agents: the thread that started it, and what its whole subtree (it and every
    # descendant) spent; for a thread without children, its own cost.
    "parent",
    "depth",
    "subtree_cost_usd",
    "subtree_tokens",
]


async def export_csv(store: Store, session: str, out: TextIO) -> int:
    """One row per thread: cost, tokens, steps, outcome, the person's minutes on it (attention)
    and the minutes it sat blocked waiting for the person."""
    state = await state_at(store, session)
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for view in state.threads.values():
        writer.writerow(
            {
                "thread": view.id,
                "agent": view.agent,
                "task": view.task,
                "title": view.title,
                "model": view.model,
                "outcome": str(view.state),
                "reason": view.reason,
                "steps": view.step,
                "tool_calls": view.tool_calls,
                "tokens": view.tokens,
                "estimated_tokens": view.estimated_tokens,
                "cost_usd": f"{view.cost_usd:.8f}",
                "errors": view.errors,
                "escalations": view.escalations,
                "lost_usd": f"{view.lost_usd:.8f}",
                "human_minutes": f"{view.human_seconds / 60:.3f}",
                "blocked_minutes": f"{view.blocked_seconds / 60:.3f}",
                "started": view.started if view.started is not None else "",
                "ended": view.ended if view.ended is not None else "",
                "parent": view.parent or "",
                "depth": view.depth,
                "subtree_cost_usd": f"{view.subtree_usd:.8f}",
                "subtree_tokens": view.subtree_tokens,
            }
        )
    return len(state.threads)


def events_from_jsonl(text: str) -> list[dict[str, Any]]:
    """Parses an export back (tests and tools reading exports use this)."""
    return [json.loads(line) for line in io.StringIO(text) if line.strip()]
