"""The one composition root of a session: open the log, check, wire, start or resume, close.

A session is always the same parts in the same order: the store (the SQLite log), a
preflight of the project's models and MCP commands, a Bus that redacts the project's secrets,
and a Supervisor; then a fresh start, or a resume that folds the recorded log first; and, at
the end, the supervisor stopped before the store is closed. `SessionRuntime` does that once
for every caller: `tower run --headless`, `tower resume`, `tower fork`, `tower experiment`
and the TUI, so none of them wires a session by hand.

Headless, Ctrl-C (SIGINT) and SIGTERM stop the threads, flush every emitted event and close
the database before returning, so the log is complete after any exit but a hard kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import Event, EventKind
from tower.core.mcp import McpStartError
from tower.core.otel import LiveExport, endpoint_configured
from tower.core.project import PROJECT_FILE, Project, ProjectError
from tower.core.replay import ReplayError
from tower.core.resumer import LogDigest
from tower.core.state import TowerState, summary
from tower.core.store import Store, StoreError
from tower.core.supervisor import ApproveMode, Supervisor


class ResumeError(Exception):
    """A session that cannot be resumed; the message says why."""


class PreflightError(Exception):
    """The project cannot run as written: one line per problem (see `preflight`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# The failures a session command expects and reports as one line ("tower: …"), never as a
# traceback: the CLI catches exactly these around every command that opens a session (and
# an experiment's own ExperimentError: the experiment module sits above this one).
SESSION_ERRORS: tuple[type[Exception], ...] = (
    StoreError,
    ReplayError,
    ResumeError,
    McpStartError,
    ProjectError,
)


def preflight(project: Project) -> list[str]:
    """Unknown models, missing API keys and MCP commands that are not there, one line each.

    The one check before a session starts (`tower check`, `run --headless`, `experiment` and
    the TUI all call it), so a project that cannot run fails before anything is recorded.
    It may import litellm (seconds): async callers run it in a worker thread.
    """
    from tower.core.llm import check_model
    from tower.core.mcp import command_problems

    file = project.root / PROJECT_FILE
    problems = []
    for i, agent in enumerate(project.agents):
        for j, model in enumerate(agent.cascade):
            ms = project.model_settings(model)
            problem = check_model(model, ms.api_base, ms.api_key_env)
            if problem:
                problems.append(f"{file}: agents[{i}].cascade[{j}]: {problem}")
    problems += [f"{file}: {line}" for line in command_problems(project)]
    return problems


@dataclass(slots=True)
class RunResult:
    summary: dict[str, Any]
    state: TowerState
    interrupted: bool
    db: Path


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
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


async def fold_recorded(
    store: Store, session: str, system_prompts: dict[str, str]
) -> tuple[TowerState, LogDigest]:
    """Folds a recorded log in one streamed pass: the state (a reducer failure on a damaged
    event is that event's DamagedLog) and what a resume needs besides. No event is kept
    once folded, so a long log costs its threads' memory, not its own."""
    from tower.core.replay import apply_checked

    state = TowerState()
    log = LogDigest(system_prompts)
    async for ev in store.events(session):
        apply_checked(state, ev, session, store)
        log.feed(ev)
    return state, log


class SessionRuntime:
    """One session's store, bus and supervisor, opened and closed in the one right order.

    Made by `SessionRuntime.open` (or `open_session`, its context manager); `start` begins
    the session (or continues the recorded one), `run` does that and waits until every
    thread ended (headless), and `close` stops the supervisor, then closes the store.
    """

    def __init__(
        self,
        store: Store,
        bus: Bus,
        sup: Supervisor,
        *,
        log: LogDigest | None = None,
        status: str | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.sup = sup
        # What a resume needs from the recorded log it continues, and the session's status
        # before it ("crashed", "unfinished", ...); both None for a new session.
        self.log = log
        self.status = status
        self.resumed = status is not None
        self.otel: LiveExport | None = None  # spans sent to an OTLP endpoint, when set
        self.started = False  # start() was attempted: close() stops the supervisor too
        self.closed = False

    @classmethod
    async def open(
        cls,
        db: str | Path | None,
        project: Project | None = None,
        *,
        resume: str | None = None,
        approve: ApproveMode = None,
        on_event: Callable[[Event], None] | None = None,
        session_id: str | None = None,
        clock: Callable[[], float] = time.time,
        load: Callable[[Path], Project] | None = None,
        check: bool = False,
    ) -> SessionRuntime:
        """Opens the log and wires a session on it; nothing runs until `start`.

        `resume`: a recorded session (id or unique prefix) to continue; its log is checked
        and folded first, and `project` defaults to its folder's tower.toml (read by `load`).
        `check`: run the preflight (PreflightError lists the problems). `on_event` sees every
        event, after the state reflects it. On any failure the store is closed again.
        """
        store = await Store.open(db)
        try:
            log: LogDigest | None = None
            state: TowerState | None = None
            status: str | None = None
            if resume is not None:
                from tower.core.project import load_project
                from tower.core.replay import resolve_session

                session = await resolve_session(store, resume)
                row = {r.id: r for r in await store.list_sessions()}[session]
                if row.status == "running":
                    raise ResumeError(f"session {session} is still running in another process")
                await store.check_log(session)  # a damaged log is one line naming the event
                if project is None:
                    project = (load or load_project)(Path(row.project_dir))
                prompts = {a.name: a.system_prompt for a in project.agents}
                state, log = await fold_recorded(store, session, prompts)
                status, session_id = row.status, session
            if project is None:
                raise ValueError("a new session needs a project")
            if check:
                problems = await asyncio.to_thread(preflight, project)
                if problems:
                    raise PreflightError(problems)
            bus = Bus(store, clock=clock, project=project)
            if state is not None:
                bus.state, bus.seq = state, state.last_seq
            if on_event is not None:
                bus.subscribe(on_event)
            otel = None
            if endpoint_configured():  # the standard OTEL_EXPORTER_OTLP_* variables
                from tower.core.otel import LiveExport, tracer_provider

                otel = LiveExport(tracer_provider(), session_id or "")
                bus.subscribe(otel)
            sup = Supervisor(
                project,
                bus,
                session_id=session_id,
                approve=approve,
                workspaces_dir=store.path.parent / "workspaces",
            )
        except BaseException:
            await store.close()
            raise
        runtime = cls(store, bus, sup, log=log, status=status)
        runtime.otel = otel
        return runtime

    @property
    def session_id(self) -> str:
        return self.sup.session_id

    @property
    def state(self) -> TowerState:
        return self.bus.state

    def nothing_to_resume(self) -> bool:
        """A resumed session whose threads all ended and whose tasks were all spawned."""
        state = self.bus.state
        if not (self.resumed and state.all_ended):
            return False
        spawn_tasks = self.log.spawn_tasks if self.log is not None else True
        return next(self.sup.unspawned(state, spawn_tasks), None) is None

    async def end_finished(self) -> None:
        """Closes the log of a session killed after its last thread ended, before its end was
        logged: the work is done, so the log ends as the uninterrupted run's would have."""
        session = self.session_id
        await self.store.reopen_session(session)
        self.store.start_writer(session)
        self.bus.emit(pl.SessionEnded(reason="finished"))
        await self.store.end_session(session, "clean")

    async def start(self, model: str | None = None, origin: dict[str, Any] | None = None) -> None:
        """Starts the session, or continues the recorded one (`model`: every unfinished
        thread continues on it; `origin`: a fork's source, for the log)."""
        self.started = True
        if self.resumed:
            assert self.log is not None
            await self.sup.resume_session(self.log, model=model, origin=origin)
            self.log = None  # its plans now live as threads
        else:
            await self.sup.start()

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        model: str | None = None,
        origin: dict[str, Any] | None = None,
    ) -> RunResult:
        """Headless: starts, waits for every thread to end or a stop (SIGINT, SIGTERM or
        `stop`), and ends the log."""
        with stop_signals() as signalled:
            if stop is not None:
                signalled = stop
            await self.start(model=model, origin=origin)
            stopped = await _run_until_idle(self.sup, signalled, self.store)
        return self.result(stopped)

    def result(self, interrupted: bool) -> RunResult:
        return RunResult(summary(self.bus.state), self.bus.state, interrupted, self.store.path)

    async def close(self, reason: str = "quit") -> None:
        """Stops the supervisor (it ends the log) if it was started, then closes the store,
        even when stopping failed; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.started:
                await self.sup.close(reason)
        finally:
            try:
                if self.otel is not None:  # the last spans, flushed off the event loop
                    await asyncio.to_thread(self.otel.shutdown)
            finally:
                await self.store.close()

    async def __aenter__(self) -> SessionRuntime:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close("finished")
            return
        # A failure on the way: the caller reports it. Only the store is closed, as every
        # headless command always did; a failed start already ended its own log.
        self.closed = True
        await self.store.close()


@contextlib.asynccontextmanager
async def open_session(
    db: str | Path | None,
    project: Project | None = None,
    *,
    resume: str | None = None,
    approve: ApproveMode = None,
    on_event: Callable[[Event], None] | None = None,
    session_id: str | None = None,
    clock: Callable[[], float] = time.time,
    load: Callable[[Path], Project] | None = None,
    check: bool = False,
) -> AsyncIterator[SessionRuntime]:
    """`SessionRuntime.open` as a context manager: the session is closed on the way out."""
    runtime = await SessionRuntime.open(
        db,
        project,
        resume=resume,
        approve=approve,
        on_event=on_event,
        session_id=session_id,
        clock=clock,
        load=load,
        check=check,
    )
    async with runtime:
        yield runtime


async def fork_copy(store: Store, session_ref: str, at: int) -> tuple[str, str]:
    """A new session holding the first `at` events of another, ended and ready to resume.

    Returns (the source session's id, the fork's id). The TUI's fork (from the sessions
    list) and `tower fork` both start from this copy.
    """
    from tower.core.replay import resolve_session
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
    async with open_session(
        db, resume=session_ref, approve=approve, on_event=on_event, load=load
    ) as runtime:
        if runtime.nothing_to_resume():
            if runtime.status != "crashed":
                raise ResumeError(
                    f"session {runtime.session_id} has no unfinished thread to resume"
                )
            await runtime.end_finished()
            return runtime.result(False)
        return await runtime.run(model=model, origin=origin)


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
    async with open_session(
        db, project, approve=approve, on_event=on_event, session_id=session_id
    ) as runtime:
        return await runtime.run(stop)
