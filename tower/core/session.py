"""Runs one session headless: open the log, start the supervisor, wait, close cleanly.

Ctrl-C (SIGINT) and SIGTERM stop the threads, flush every emitted event and close the
database before returning, so the log is complete after any exit but a hard kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import Event, EventKind
from tower.core.project import Project
from tower.core.state import TowerState, summary
from tower.core.store import Store
from tower.core.supervisor import ApproveMode, Supervisor


@dataclass(slots=True)
class RunResult:
    summary: dict[str, Any]
    state: TowerState
    interrupted: bool
    db: Path


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """SIGINT and SIGTERM set the returned event instead of killing the process."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    # Signal handlers belong to the main thread, on a POSIX loop: an experiment started from
    # the TUI runs on the core's thread, and Windows loops have none; both rely on `stop`.
    if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield stop
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _run_until_idle(sup: Supervisor, stop: asyncio.Event, store: Store) -> bool:
    """Waits for every thread to end (or a stop signal), closes the session; True if stopped."""
    idle = asyncio.create_task(sup.wait_idle())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({idle, stopping}, return_when=asyncio.FIRST_COMPLETED)
    idle.cancel()
    stopping.cancel()
    await sup.close("interrupted" if stop.is_set() else "finished")
    if store.error is not None:
        raise store.error
    return stop.is_set()


class ResumeError(Exception):
    """A session that cannot be resumed; the message says why."""


async def fork_copy(store: Store, session_ref: str, at: int) -> tuple[str, str]:
    """A new session holding the first `at` events of another, ended and ready to resume.

    Returns (the source session's id, the fork's id). The TUI's fork (from the sessions
    list) and `tower fork` both start from this copy.
    """
    from tower.core.replay import ReplayError, resolve_session
    from tower.core.supervisor import new_session_id

    source = await resolve_session(store, session_ref)
    row = {r.id: r for r in await store.list_sessions()}[source]
    await store.check_log(source)
    events = [ev async for ev in store.events(source, 0, at)] if at >= 1 else []
    if not events or events[-1].seq < at:
        raise ReplayError(f"session {source} has no event {at}")
    fork = new_session_id()
    meta = {"forked_from": source, "at": at}
    await store.create_session(fork, row.project, row.project_dir, events[0].ts, meta)
    store.start_writer(fork)
    for ev in events:
        if ev.kind is EventKind.SESSION_STARTED:
            ev = Event(ev.seq, ev.ts, ev.kind, ev.thread, {**ev.payload, "session": fork})
        store.append(ev)
    await store.end_session(fork, "clean")
    return source, fork


async def fork_headless(
    db: str | Path | None,
    session_ref: str,
    at: int,
    approve: ApproveMode,
    model: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    load: Callable[[Path], Project] | None = None,
) -> RunResult:
    """A new session holding the first `at` events of another, continued live from there.

    The copied model calls are reused as recorded (nothing before `at` is called or billed
    again); with `model`, every unfinished thread continues on that model instead.
    """
    store = await Store.open(db)
    try:
        source, fork = await fork_copy(store, session_ref, at)
    finally:
        await store.close()
    return await resume_headless(
        db,
        fork,
        approve,
        on_event,
        load,
        model=model,
        origin={"forked_from": source, "at": at},
    )


def fold_checked(events: list[Event], session: str, store: Store) -> TowerState:
    """fold, with a reducer failure on a damaged event reported as that event's DamagedLog."""
    from tower.core.replay import apply_checked

    state = TowerState()
    for ev in events:
        apply_checked(state, ev, session, store)
    return state


async def resume_headless(
    db: str | Path | None,
    session_ref: str,
    approve: ApproveMode,
    on_event: Callable[[Event], None] | None = None,
    load: Callable[[Path], Project] | None = None,
    model: str | None = None,
    origin: dict[str, Any] | None = None,
) -> RunResult:
    """Continues a recorded session's unfinished threads in the same log, then closes it."""
    from tower.core.project import load_project
    from tower.core.replay import resolve_session

    store = await Store.open(db)
    try:
        session = await resolve_session(store, session_ref)
        rows = {r.id: r for r in await store.list_sessions()}
        if rows[session].status == "running":
            raise ResumeError(f"session {session} is still running in another process")
        await store.check_log(session)  # a damaged log is one line naming the event
        events = [ev async for ev in store.events(session)]
        state = fold_checked(events, session, store)
        project = (load or load_project)(Path(rows[session].project_dir))
        bus = Bus(store, project=project)
        bus.state, bus.seq = state, state.last_seq
        if on_event is not None:
            bus.subscribe(on_event)
        sup = Supervisor(
            project,
            bus,
            session_id=session,
            approve=approve,
            workspaces_dir=store.path.parent / "workspaces",
        )
        if state.all_ended and not sup.unspawned(state, events):
            if rows[session].status != "crashed":
                raise ResumeError(f"session {session} has no unfinished thread to resume")
            # Killed after its last thread ended, before its end was logged: the work is
            # done, so resuming closes the log as the uninterrupted run would have.
            await store.reopen_session(session)
            store.start_writer(session)
            bus.emit(pl.SessionEnded(reason="finished"))
            await store.end_session(session, "clean")
            return RunResult(summary(bus.state), bus.state, False, store.path)
        with _stop_signals() as stop:
            await sup.resume_session(events, model=model, origin=origin)
            stopped = await _run_until_idle(sup, stop, store)
        return RunResult(summary(bus.state), bus.state, stopped, store.path)
    finally:
        await store.close()


async def run_headless(
    project: Project,
    db: str | Path | None,
    approve: ApproveMode,
    on_event: Callable[[Event], None] | None = None,
    session_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Runs every task of the project to its end; raises StoreError if the log cannot open.

    `stop`, when set, ends the run like SIGINT does (the TUI's experiment screen uses it).
    """
    store = await Store.open(db)
    try:
        bus = Bus(store, project=project)
        if on_event is not None:
            bus.subscribe(on_event)
        sup = Supervisor(
            project,
            bus,
            session_id=session_id,
            approve=approve,
            workspaces_dir=store.path.parent / "workspaces",
        )
        with _stop_signals() as signalled:
            if stop is not None:
                signalled = stop
            await sup.start()
            stopped = await _run_until_idle(sup, signalled, store)
        return RunResult(summary(bus.state), bus.state, stopped, store.path)
    finally:
        await store.close()
