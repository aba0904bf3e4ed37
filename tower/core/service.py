"""The fleet as a local service: one session's core behind a Unix socket, for many views.

`tower up DIR` runs `Service` in a background process (`tower serve`): the session's
supervisor, ledger, store and agent loops, and a Unix socket in the user's runtime folder
(`$XDG_RUNTIME_DIR/tower/<session>.sock`, mode 0600, in a 0700 folder). Only the socket's
owner may talk to it: each peer's uid is read from the kernel (SO_PEERCRED) and any other
is refused. Beside the socket, `<session>.json` says which project, database and process
serve the session, so `tower ls` can list services without asking each one, and tell a
live service from one that died (its pid is gone: crashed; `tower up` resumes it).

A view (the CLI's verbs, later the TUI and a browser) speaks tower/core/wire.py: it gets a
snapshot of the reduced state and then every event, and folds them with the same reducer.
A view that falls behind (more than `QUEUE_MAX` events unsent) gets a fresh snapshot
instead: a slow view never slows the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from tower.core import wire
from tower.core.control import Control
from tower.core.events import Event, ThreadState
from tower.core.progress import RateMeter, ended_count, progress
from tower.core.project import PROJECT_FILE, Project, ProjectError, load_project, reload_words
from tower.core.run import CommandError
from tower.core.state import state_to_dict, summary
from tower.core.watch import watch_file
from tower.core.wire import ServiceError

log = logging.getLogger(__name__)

QUEUE_MAX = 20_000
FIGURES_S = 1.0


def fleet_dir() -> Path:
    """The folder of the running services' sockets: `tower` in the user's runtime folder
    ($XDG_RUNTIME_DIR, else platformdirs' fallback), made private (0700)."""
    with warnings.catch_warnings():  # no XDG_RUNTIME_DIR: platformdirs warns, then falls back
        warnings.simplefilter("ignore")
        path = Path(platformdirs.user_runtime_dir("tower", appauthor=False))
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def socket_path(session: str) -> Path:
    return fleet_dir() / f"{session}.sock"


def info_path(session: str) -> Path:
    return fleet_dir() / f"{session}.json"


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket, from the kernel."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def pid_alive(pid: int) -> bool:
    """Whether the process runs; one that exited but was not yet reaped by its parent (a
    zombie: a fleet started by a TUI that is still open) has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal check is all there is
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def listening(path: Path) -> bool:
    """Whether a process accepts connections on this socket (a stale file: no)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


@dataclass
class Listed:
    """One service as `tower ls` shows it."""

    session: str
    project: str
    project_dir: str
    db: str
    pid: int
    started: float
    status: str  # running | crashed
    socket: str


def listed() -> list[Listed]:
    """Every service the runtime folder knows, newest first: running, or crashed (its
    process is gone); a socket file left by a dead service is removed."""
    out = []
    for info in sorted(fleet_dir().glob("*.json")):
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
            pid = int(data["pid"])
            sock = Path(data["socket"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: not a service of ours
        alive = pid_alive(pid) and listening(sock)
        if not alive:
            with contextlib.suppress(OSError):
                sock.unlink()
        out.append(
            Listed(
                session=str(data.get("session", info.stem)),
                project=str(data.get("project", "")),
                project_dir=str(data.get("project_dir", "")),
                db=str(data.get("db", "")),
                pid=pid,
                started=float(data.get("started", 0.0)),
                status="running" if alive else "crashed",
                socket=str(sock),
            )
        )
    out.sort(key=lambda s: s.started, reverse=True)
    return out


@dataclass(eq=False)
class _View:
    """One connected view: the events not yet sent to it, or a note that it fell behind."""

    writer: asyncio.StreamWriter
    client: str = "view"  # what the view said it is in its hello ("cli", "tui")
    pending: deque[Event] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    behind: bool = False
    # Messages that are not the session's events (figures, notices), sent before the next
    # events; a few at most (figures are replaced, not queued).
    others: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tell(self, key: str, msg: dict[str, Any]) -> None:
        self.others[key] = msg
        self.wake.set()

    def push(self, ev: Event) -> None:
        if self.behind:
            return
        if len(self.pending) >= QUEUE_MAX:
            self.behind = True  # it gets a fresh snapshot instead of the backlog
            self.pending.clear()
        else:
            self.pending.append(ev)
        self.wake.set()


class Service:
    """Serves one live session (its Control) on a Unix socket."""

    def __init__(
        self,
        control: Control,
        path: Path,
        *,
        allowed_uid: int | None = None,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self.control = control
        self.path = path
        self.allowed_uid = os.getuid() if allowed_uid is None else allowed_uid
        self.on_down = on_down
        self.views: set[_View] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # one per connection
        self._senders: set[asyncio.Task[None]] = set()
        self._figures: asyncio.Task[None] | None = None
        self.pace = RateMeter()  # threads ended per second: `tower ls` shows it and an ETA

    async def start(self, subscribe: Callable[[Callable[[Event], None]], object]) -> None:
        """Listens (a stale socket file of a dead service is replaced; a live one is an
        error), and receives every event from `subscribe` from now on."""
        if self.path.exists() or self.path.is_symlink():
            if listening(self.path):
                raise ServiceError(f"{self.path}: another service is listening there")
            self.path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=wire.MAX_LINE
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        subscribe(self._on_event)
        self._figures = asyncio.create_task(self._send_figures())

    def _on_event(self, ev: Event) -> None:
        for view in self.views:
            view.push(ev)

    def notice(
        self, title: str, message: str, severity: str = "information", reloaded: bool = False
    ) -> None:
        """Tells every view something once (wire.notice)."""
        msg = wire.notice(title, message, severity, reloaded)
        for view in self.views:
            view.tell(f"notice-{time.monotonic_ns()}", msg)

    async def _send_figures(self) -> None:
        """The call gate's counters to every view, once a second (a view's budget bar shows
        calls in flight and held back, as an in-process screen does)."""
        while True:
            await asyncio.sleep(FIGURES_S)
            self.pace.add(time.monotonic(), ended_count(self.control.state))
            if self.views:
                f = self.control.calls()
                msg = wire.figures(
                    f.in_flight, f.waiting, round(f.lag_s, 4), f.workers, f.worker_slots
                )
                for view in self.views:
                    view.tell("figures", msg)

    async def close(self) -> None:
        """Stops listening and hangs up on every view (each connection's task then ends on
        its own: asyncio's server must not see them cancelled)."""
        if self._server is not None:
            self._server.close()
        if self._figures is not None:
            self._figures.cancel()
        for view in list(self.views):
            view.writer.close()
        for task in list(self._senders):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    # --- one view -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        view: _View | None = None
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock) if sock is not None else -1
            if uid != self.allowed_uid:
                await self._send(
                    writer, wire.error(None, f"refused: uid {uid} does not own this fleet")
                )
                return
            try:
                hello = wire.decode(await reader.readline())
                wire.check_hello(hello)
            except wire.WireError as exc:
                await self._send(writer, wire.error(None, str(exc)))
                return
            project = self.control.project
            store = self.control.store
            if hello.get("watch") is False:  # a script's commands: no state, no events
                await self._send(
                    writer,
                    wire.welcome(self.control.session_id, {}, self.control.state.last_seq),
                )
                await self._read_commands(reader, writer)
                return
            # The snapshot and the subscription together, with no await between them: every
            # event after the snapshot reaches this view, none before it.
            view = _View(writer, client=str(hello.get("client") or "view")[:20])
            welcome = wire.welcome(
                self.control.session_id,
                self._snapshot(),
                self.control.state.last_seq,
                project_dir=str(project.root),
                db=str(store.path) if store is not None else None,
            )
            self.views.add(view)
            sender = asyncio.create_task(self._send_events(view))
            self._senders.add(sender)
            try:
                await self._send(writer, welcome)
                view.wake.set()
                await self._read_commands(reader, writer)
            finally:
                sender.cancel()
                self._senders.discard(sender)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # a view that went away (or sent a line over the limit) is simply gone
        finally:
            if view is not None:
                self.views.discard(view)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def _snapshot(self) -> dict[str, Any]:
        return state_to_dict(self.control.state)

    async def _send(self, writer: asyncio.StreamWriter, msg: dict[str, Any]) -> None:
        writer.write(wire.encode(msg))
        await writer.drain()

    async def _send_events(self, view: _View) -> None:
        writer = view.writer
        while True:
            await view.wake.wait()
            view.wake.clear()
            if view.behind:
                # Again snapshot and queue together: what follows is what came after it.
                view.behind = False
                view.pending.clear()
                msg = wire.resync(self._snapshot(), self.control.state.last_seq)
                await self._send(writer, msg)
                continue
            while view.others:
                writer.write(wire.encode(view.others.pop(next(iter(view.others)))))
            while view.pending and not view.behind:
                writer.write(wire.encode(wire.event(view.pending.popleft())))
            await writer.drain()

    async def _read_commands(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            cid = None
            try:
                msg = wire.decode(line)
                cid = msg.get("id") if isinstance(msg.get("id"), int) else None
                cmd = wire.command_of(msg)
                if cmd.verb == "thread_events":
                    result = await self.thread_events(str(cmd.args["thread"]))
                else:
                    result = self.run(cmd)
            except (wire.WireError, CommandError) as exc:
                await self._send(writer, wire.error(cid, str(exc)))
                continue
            except Exception as exc:  # a command's failure is one line, never the service's end
                await self._send(writer, wire.error(cid, f"{type(exc).__name__}: {exc}"))
                continue
            await self._send(writer, wire.reply(cmd.id, result))
            if cmd.verb == "down" and self.on_down is not None:
                self.on_down()

    # --- commands -------------------------------------------------------------------------

    def run(self, cmd: wire.Command) -> Any:
        """Carries out one command on the core (this loop); CommandError says why not."""
        c, a = self.control, cmd.args
        verb = cmd.verb
        if verb == "state":
            views: dict[str, int] = {}
            for v in self.views:
                views[v.client] = views.get(v.client, 0) + 1
            return {**service_summary(c, self.pace.per_second()), "views": views}
        if verb == "inbox":
            return inbox_rows(c)
        # A view's person: the seconds they spent on it, and the batch one key decided.
        spent = _number(a.get("attention_s"))
        batch = str(a["batch"]) if a.get("batch") is not None else None
        if verb == "approve":
            c.approve(str(a["item"]), args=a.get("args"), attention_s=spent, batch=batch)
            return {"item": a["item"], "resolution": "approved"}
        if verb == "deny":
            c.deny(str(a["item"]), comment=a.get("reason"), attention_s=spent, batch=batch)
            return {"item": a["item"], "resolution": "denied"}
        if verb == "reply":
            c.reply(str(a["target"]), str(a["text"]), attention_s=spent, batch=batch)
            return {"target": a["target"]}
        if verb == "escalate":
            return c.escalate(str(a["thread"]), "human" if a.get("to") == "human" else "model")
        if verb in ("pause_all", "resume_all"):
            getattr(c, verb)()
            return None
        if verb in ("pause_tree", "resume_tree", "kill_tree", "escalate_tree"):
            return getattr(c, verb)(str(a["thread"]))
        if verb == "task_copies":
            return [
                {"thread": t.thread_id, "task": t.task.id, "title": t.title}
                for t in c.task_copies()
            ]
        if verb == "spawn_task":
            budget = _number(a.get("budget_usd"))
            return c.spawn_task(
                str(a["task"]), model=a.get("model"), budget_usd=budget, prompt=a.get("prompt")
            )
        if verb == "grant":
            return c.grant(
                str(a["tool"]),
                a.get("args"),
                agent=a.get("agent"),
                minutes=_number(a.get("minutes")) or 10.0,
                item=a.get("item"),
            )
        if verb == "revoke":
            c.revoke(str(a["rule"]))
            return None
        if verb == "spawn":
            agent = a.get("agent") or c.project.agents[0].name
            tid = c.spawn(
                str(agent),
                str(a["prompt"]),
                model=a.get("model"),
                budget_usd=_number(a.get("budget_usd")),
                workspace=a.get("workspace"),
            )
            return {"thread": tid}
        if verb in ("pause", "resume", "kill"):
            getattr(c, verb)(str(a["thread"]))
            return {"thread": a["thread"], "done": verb}
        if verb == "raise_budget":
            c.raise_budget(
                a.get("target"), usd=_number(a.get("usd")) or 0.0, attention_s=spent, batch=batch
            )
            return {"target": a.get("target")}
        if verb == "down":
            return {"session": c.session_id, "stopping": True}
        raise CommandError(f"unknown command {verb!r}")

    async def thread_events(self, tid: str) -> list[dict[str, Any]]:
        """A thread's events as the log has them (a view's transcript of it)."""
        store = self.control.store
        if store is None:
            return []
        await store.flush()
        session = self.control.session_id
        return [ev.to_dict() async for ev in store.thread_events(session, tid)]


def _number(value: Any) -> float | None:
    """A number a view sent, or None; anything else is a one-line error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"expected a number, got {value!r}")
    return float(value)


def service_summary(c: Control, per_s: float = 0.0) -> dict[str, Any]:
    """What `tower ls` shows of a running service: threads by state, inbox, spend, and the
    run's progress (`per_s`: threads ended per second lately)."""
    state = c.state
    counts = {str(s): state.count(s) for s in ThreadState if state.count(s)}
    return {
        **summary(state),
        "by_state": counts,
        "inbox": len(state.inbox),
        "not_started": state.tasks_unstarted,
        "progress": progress(state, per_s).to_dict(),
        "all_ended": bool(state.threads) and state.all_ended and not state.tasks_unstarted,
    }


def inbox_rows(c: Control) -> list[dict[str, Any]]:
    """The open inbox items, oldest first, with what a script needs to decide them."""
    out = []
    for item in c.state.inbox.values():
        d = item.data
        out.append(
            {
                "item": item.id,
                "thread": item.thread,
                "kind": str(item.kind),
                "age_s": round(time.time() - item.created, 1),
                "tool": d.get("tool"),
                "args": d.get("args"),
                "question": d.get("question"),
                "reason": d.get("reason"),
            }
        )
    return out


def write_info(session: str, project: str, project_dir: str, db: str, sock: Path) -> Path:
    """`<session>.json` beside the socket, written whole (tmp + rename), mode 0600."""
    path = info_path(session)
    tmp = path.with_name(path.name + ".tmp")
    data = {
        "session": session,
        "project": project,
        "project_dir": project_dir,
        "db": db,
        "pid": os.getpid(),
        "started": time.time(),
        "socket": str(sock),
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    return path


async def serve(
    db: str | Path | None,
    project: Project | None = None,
    *,
    resume: str | None = None,
    load: Callable[[Path], Project] | None = None,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> str:
    """Runs one session as a service until `tower down`, SIGTERM/SIGINT or `stop`: starts
    (or, with `resume`, continues) it with nobody deciding for the person (the inbox waits
    for a view), listens on its socket, and tells `ready` the session id once views can
    connect. Returns the session id. When it stops, the log ends as a quit TUI's would
    (unfinished threads can be resumed with `tower up` or `tower resume`)."""
    from tower.core.session import SessionRuntime, stop_signals

    runtime = await SessionRuntime.open(db, project, resume=resume, load=load, check=True)
    service: Service | None = None
    info: Path | None = None
    watcher: asyncio.Task[None] | None = None
    try:
        with stop_signals() as signalled:
            down = stop or signalled
            await runtime.start()
            session = runtime.session_id
            control = Control(runtime.sup)
            service = Service(control, socket_path(session), on_down=down.set)
            await service.start(runtime.bus.subscribe)
            proj = runtime.sup.project
            info = write_info(
                session, proj.name, str(proj.root), str(runtime.store.path), service.path
            )
            watching = asyncio.Event()  # edits from `ready` on are seen
            watcher = asyncio.create_task(_watch_project(proj.root, control, service, watching))
            await watching.wait()
            if ready is not None:
                ready(session)
            if stop is not None:  # a caller's stop, and the signals, both end it
                waiters = [asyncio.ensure_future(e.wait()) for e in (stop, signalled)]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
            else:
                await signalled.wait()
        return session
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if service is not None:
            await service.close()
        if info is not None:
            with contextlib.suppress(OSError):
                info.unlink()
        ended = bool(runtime.state.threads) and runtime.state.all_ended
        await runtime.close("finished" if ended else "stopped")


async def _watch_project(
    root: Path, control: Control, service: Service, ready: asyncio.Event
) -> None:
    """The fleet follows edits of its tower.toml, whether or not a view is attached: a good
    edit applies (new agents and tasks, policy, model limits), a bad one changes nothing;
    every view is told which (a notice)."""

    async def reload(path: Path) -> None:
        try:
            project = await asyncio.to_thread(load_project, path.parent)
        except ProjectError as exc:
            title, message = reload_words(exc)
            log.warning("%s: %s", title, message)
            service.notice(title, message, "error")
            return
        control.reload(project)
        title, message = reload_words(project)
        log.info("%s: %s", title, message)
        service.notice(title, message, reloaded=True)

    await watch_file(root / PROJECT_FILE, reload, ready=ready)
