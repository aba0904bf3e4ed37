"""A front end's Control for a fleet that runs elsewhere: `tower attach` (the TUI as a view
of a running service).

It offers what core/control.py's Control offers the TUI, over the service's socket: the
state (the snapshot, then every event folded with the same reducer, under `lock` so the
screen reads a consistent state from its own thread), the read-only facts a screen needs,
and the commands, which here are coroutines (the app awaits what a command returns). A
refusal is a CommandError with the service's one-line reason, as in-process.

Runs on the core's loop (ui/core_thread.py), like Control: `connect` there, and every
command is awaited there.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from tower.core import wire
from tower.core.client import handshake
from tower.core.control import CallFigures
from tower.core.events import Event
from tower.core.project import Project, ProjectError, load_project
from tower.core.run import CommandError, TaskCopy
from tower.core.state import TowerState, apply, state_from_dict
from tower.core.tasks import next_copy, planned_id, thread_folders


class RemoteControl:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        welcome: dict[str, Any],
        project: Project,
        on_event: Callable[[Event], None] | None,
        on_resync: Callable[[], None] | None = None,
        on_notice: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._state = state_from_dict(welcome["snapshot"])
        self._lock = threading.RLock()
        self.session_id = str(welcome["session"])
        self.db = Path(welcome["db"]) if welcome.get("db") else None
        self.project = project
        self.on_event = on_event
        self.on_resync = on_resync  # a fresh snapshot replaced the state: redraw it all
        self.on_notice = on_notice  # the fleet tells the person something (wire.notice)
        self._figures = CallFigures(0, 0, 0.0)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0
        self.lost: str | None = None  # why the connection ended, once it has
        self.gone = asyncio.Event()
        self._pump = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        path: Path,
        on_event: Callable[[Event], None] | None = None,
        on_resync: Callable[[], None] | None = None,
        on_notice: Callable[[dict[str, Any]], None] | None = None,
    ) -> RemoteControl:
        reader, writer, msg = await handshake(path, "tui")
        project = await asyncio.to_thread(load_project, Path(str(msg["project_dir"])))
        return cls(reader, writer, msg, project, on_event, on_resync, on_notice)

    # --- reads --------------------------------------------------------------------------

    @property
    def state(self) -> TowerState:
        return self._state

    @property
    def lock(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock

    @property
    def store(self) -> None:
        return None  # the log is the service's; transcripts come through thread_events

    def calls(self) -> CallFigures:
        """The fleet's call gate, as its last `figures` message said (once a second)."""
        return self._figures

    def is_open(self, item: str) -> bool:
        return item in self._state.inbox

    def workspace_folders(self, tid: str) -> tuple[Path | None, Path | None]:
        """Control's rule (tasks.thread_folders), from the fleet's database folder."""
        copies = self.db.parent / "workspaces" if self.db is not None else None
        return thread_folders(self.project, self._state, tid, copies, self.session_id)

    def task_copies(self) -> list[TaskCopy]:
        return [self.task_copy(t.id) for t in self.project.tasks]

    def task_copy(self, task_id: str) -> TaskCopy:
        """The service's rule (Supervisor._kept): while the project is still being fed, a
        copy the feed will spawn is not offered."""
        state = self._state
        feeding = state.tasks_unstarted > 0

        def kept(tid: str) -> bool:
            return tid in state.threads or (feeding and planned_id(self.project, tid))

        return next_copy(self.project, task_id, kept)

    async def thread_events(self, tid: str) -> list[Event]:
        rows = await self._command("thread_events", thread=tid)
        return [wire.event_of({"type": "event", **r}) for r in rows]

    # --- the stream ---------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    self.lost = "the fleet closed the connection"
                    return
                msg = wire.decode(line)
                kind = msg["type"]
                if kind == "event":
                    ev = wire.event_of(msg)
                    with self._lock:
                        apply(self._state, ev)
                    if self.on_event is not None:
                        self.on_event(ev)
                elif kind == "resync":
                    with self._lock:
                        self._state = state_from_dict(msg["snapshot"])
                    if self.on_resync is not None:
                        self.on_resync()
                elif kind == "figures":
                    self._figures = CallFigures(
                        int(msg.get("in_flight") or 0),
                        int(msg.get("waiting") or 0),
                        float(msg.get("lag_s") or 0.0),
                        int(msg.get("workers") or 0),
                        int(msg.get("worker_slots") or 0),
                    )
                elif kind == "notice":
                    if msg.get("reloaded"):  # the fleet runs the edited tower.toml now
                        with contextlib.suppress(ProjectError):
                            self.project = await asyncio.to_thread(load_project, self.project.root)
                    if self.on_notice is not None:
                        self.on_notice(msg)
                elif kind in ("reply", "error"):
                    cid = msg.get("id")
                    fut = self._replies.pop(cid, None) if isinstance(cid, int) else None
                    if fut is not None and not fut.done():
                        if kind == "reply":
                            fut.set_result(msg.get("result"))
                        else:
                            fut.set_exception(CommandError(str(msg.get("message", ""))))
        except (ConnectionError, ValueError, wire.WireError) as exc:
            self.lost = f"the fleet connection broke ({exc})"
        finally:
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(CommandError(self.lost or "the fleet is gone"))
            self.gone.set()

    async def _command(self, verb: str, **args: Any) -> Any:
        if self.gone.is_set():
            raise CommandError(self.lost or "the fleet is gone")
        self._ids += 1
        cid = self._ids
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[cid] = fut
        self._writer.write(wire.encode(wire.command(cid, verb, **args)))
        await self._writer.drain()
        return await fut

    async def close(self) -> None:
        self._pump.cancel()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            await self._writer.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump

    # --- commands (coroutines: the app awaits them) ------------------------------------------

    async def spawn(
        self,
        agent: str,
        prompt: str,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        workspace: str | None = None,
    ) -> str:
        reply = await self._command(
            "spawn",
            agent=agent,
            prompt=prompt,
            model=model,
            budget_usd=budget_usd,
            workspace=workspace,
        )
        return str(reply["thread"])

    async def spawn_task(
        self,
        task_id: str,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        prompt: str | None = None,
    ) -> str:
        return str(
            await self._command(
                "spawn_task", task=task_id, model=model, budget_usd=budget_usd, prompt=prompt
            )
        )

    async def pause(self, tid: str) -> None:
        await self._command("pause", thread=tid)

    async def resume(self, tid: str) -> None:
        await self._command("resume", thread=tid)

    async def pause_all(self) -> None:
        await self._command("pause_all")

    async def resume_all(self) -> None:
        await self._command("resume_all")

    async def kill(self, tid: str) -> None:
        await self._command("kill", thread=tid)

    async def escalate(self, tid: str, to: Literal["model", "human"] = "model") -> str:
        return str(await self._command("escalate", thread=tid, to=to))

    def tree(self, tid: str) -> list[str]:
        from tower.core.state import subtree

        return [t for t in subtree(self._state, tid) if not self._state.threads[t].state.ended]

    async def pause_tree(self, tid: str) -> int:
        return int(await self._command("pause_tree", thread=tid))

    async def resume_tree(self, tid: str) -> int:
        return int(await self._command("resume_tree", thread=tid))

    async def kill_tree(self, tid: str) -> int:
        return int(await self._command("kill_tree", thread=tid))

    async def escalate_tree(self, tid: str) -> int:
        return int(await self._command("escalate_tree", thread=tid))

    async def approve(
        self,
        item: str,
        *,
        args: dict[str, Any] | None = None,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        await self._command("approve", item=item, args=args, attention_s=attention_s, batch=batch)

    async def deny(
        self,
        item: str,
        *,
        comment: str | None = None,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        await self._command("deny", item=item, reason=comment, attention_s=attention_s, batch=batch)

    async def reply(
        self,
        target: str,
        text: str,
        *,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        await self._command("reply", target=target, text=text, attention_s=attention_s, batch=batch)

    async def raise_budget(
        self,
        target: str | None,
        *,
        usd: float = 0.0,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        await self._command(
            "raise_budget", target=target, usd=usd, attention_s=attention_s, batch=batch
        )

    async def grant(
        self,
        tool: str,
        args: dict[str, str] | None = None,
        *,
        agent: str | None = None,
        minutes: float = 10.0,
        item: str | None = None,
    ) -> str:
        return str(
            await self._command(
                "grant", tool=tool, args=args, agent=agent, minutes=minutes, item=item
            )
        )

    async def revoke(self, rid: str) -> None:
        await self._command("revoke", rule=rid)

    async def down(self) -> None:
        await self._command("down")
