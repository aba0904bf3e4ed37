"""The narrow command API a person's front end steers a running session through.

The TUI (and later a socket client) holds a `Control` and reads the state; it never holds
the Supervisor. Each command delegates to one of the Supervisor's public methods, so every
decision still becomes events on the bus and can be replayed; a command that cannot apply
raises CommandError with a one-line reason. The few read-only facts a screen needs that are
not in the state (the call gate's figures, a thread's workspace folders, the project in
force) are queries here, so no front end walks the supervisor's own structures.

Threading: commands and `workspace_folders` run on the core's event loop (the loop the
supervisor runs on); the TUI hops there with CoreThread.call. `calls()` only copies three
counters and may be read from any thread. This module imports no Textual.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tower.core.project import Project
from tower.core.state import TowerState, root_of
from tower.core.store import Store
from tower.core.supervisor import CommandError, Supervisor, TaskCopy
from tower.core.tasks import thread_folders

__all__ = ["CallFigures", "CommandError", "Control"]


@dataclass(frozen=True, slots=True)
class CallFigures:
    """What the call gate (core/admission.py) is doing: calls in flight, calls held back by
    tower itself, and the core loop's latest lag; a frame may see them one call apart."""

    in_flight: int
    waiting: int
    lag_s: float
    workers: int = 0  # worker processes taking calls (core/callworkers.py)
    worker_slots: int = 0  # worker processes the session runs with (0: calls in-process)


class Control:
    """Commands to one live session, and the queries a front end needs besides the state."""

    def __init__(self, sup: Supervisor) -> None:
        self._sup = sup

    # --- reads --------------------------------------------------------------------------

    @property
    def state(self) -> TowerState:
        """The folded state; read it from another thread only while holding `lock`."""
        return self._sup.bus.state

    @property
    def lock(self) -> contextlib.AbstractContextManager[Any]:
        """Held by the reducer while it applies an event (the bus's re-entrant lock)."""
        return self._sup.bus.lock

    @property
    def session_id(self) -> str:
        return self._sup.session_id

    @property
    def store(self) -> Store | None:
        """The session's log (a service reads a thread's recorded events from it)."""
        return self._sup.bus.store

    @property
    def project(self) -> Project:
        """The project in force: the last tower.toml reloaded, not the one started with."""
        return self._sup.project

    def calls(self) -> CallFigures:
        """The call gate's counters, copied (plain ints the core thread updates)."""
        gate, pool = self._sup.calls, self._sup.pool
        if pool is None:
            return CallFigures(gate.in_flight, gate.waiting, gate.lag.lag_s)
        return CallFigures(gate.in_flight, gate.waiting, gate.lag.lag_s, pool.ready, pool.size)

    def is_open(self, item: str) -> bool:
        """Whether an inbox item still waits for a decision (a rule may have taken it)."""
        return item in self._sup.bus.state.inbox

    def workspace_folders(self, tid: str) -> tuple[Path | None, Path | None]:
        """(the thread's workspace, the original folder it was copied from): see
        tasks.thread_folders."""
        sup = self._sup
        state = sup.bus.state
        run = sup.runs.get(root_of(state, tid))
        return thread_folders(sup.project, state, tid, sup.workspaces_dir, sup.session_id, run)

    def task_copies(self) -> list[TaskCopy]:
        """What spawning each of the project's tasks would start now (next id, {n} filled)."""
        return [self._sup.task_copy(t.id) for t in self._sup.project.tasks]

    def task_copy(self, task_id: str) -> TaskCopy:
        return self._sup.task_copy(task_id)

    # --- threads ------------------------------------------------------------------------

    def spawn(
        self,
        agent: str,
        prompt: str,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        workspace: str | None = None,
    ) -> str:
        """A new thread of an agent; returns its id."""
        return self._sup.spawn(
            agent, prompt, model=model, budget_usd=budget_usd, workspace=workspace
        )

    def spawn_task(
        self,
        task_id: str,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        prompt: str | None = None,
    ) -> str:
        """One more thread of a project task; returns its id."""
        return self._sup.spawn_task(task_id, model=model, budget_usd=budget_usd, prompt=prompt)

    def pause(self, tid: str) -> None:
        self._sup.pause(tid)

    def resume(self, tid: str) -> None:
        self._sup.resume(tid)

    def pause_all(self) -> None:
        self._sup.pause_all()

    def resume_all(self) -> None:
        self._sup.resume_all()

    def kill(self, tid: str) -> None:
        self._sup.kill(tid)

    def escalate(self, tid: str, to: Literal["model", "human"] = "model") -> str:
        """The new model, or the inbox item when the thread is handed to the human."""
        return self._sup.escalate(tid, to)

    # --- subtrees (a thread and its sub-agents) -----------------------------------------

    def tree(self, tid: str) -> list[str]:
        """The live threads of a thread's subtree (itself and its descendants)."""
        return self._sup.tree(tid)

    def pause_tree(self, tid: str) -> int:
        """Asks every live thread of the subtree to pause; how many were asked."""
        return self._sup.pause_tree(tid)

    def resume_tree(self, tid: str) -> int:
        """Withdraws the pause of every live thread of the subtree; how many."""
        return self._sup.resume_tree(tid)

    def kill_tree(self, tid: str) -> int:
        """Kills the subtree's live threads; how many ended."""
        return self._sup.kill_tree(tid)

    def escalate_tree(self, tid: str) -> int:
        """Moves each live thread of the subtree that has a stronger model onto it; how many
        moved (CommandError when none has one left)."""
        return self._sup.escalate_tree(tid)

    # --- decisions ----------------------------------------------------------------------

    def approve(
        self,
        item: str,
        *,
        args: dict[str, Any] | None = None,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        self._sup.approve(item, args=args, attention_s=attention_s, batch=batch)

    def deny(
        self,
        item: str,
        *,
        comment: str | None = None,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        self._sup.deny(item, comment=comment, attention_s=attention_s, batch=batch)

    def reply(
        self,
        target: str,
        text: str,
        *,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        """Answers a question or handoff (or approves with a comment); on a thread id, a
        comment the thread reads before its next model call."""
        self._sup.reply(target, text, attention_s=attention_s, batch=batch)

    def raise_budget(
        self,
        target: str | None,
        *,
        usd: float = 0.0,
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        """On a budget item, the cap that stopped it (by its suggestion when `usd` is 0); on
        None, the session's cap."""
        self._sup.raise_budget(target, usd=usd, attention_s=attention_s, batch=batch)

    # --- policy -------------------------------------------------------------------------

    def grant(
        self,
        tool: str,
        args: dict[str, str] | None = None,
        *,
        agent: str | None = None,
        minutes: float = 10.0,
        item: str | None = None,
    ) -> str:
        """A time-boxed allow rule (approving `item` with it); returns the rule's id."""
        return self._sup.grant(tool, args, agent=agent, minutes=minutes, item=item)

    def revoke(self, rid: str) -> None:
        self._sup.revoke(rid)

    def reload(self, project: Project) -> None:
        """An edited tower.toml: its new `api_key_env` values are secrets from now on, its
        policy and model limits apply, and its new agents and tasks can be spawned."""
        self._sup.bus.add_secrets_of(project)
        self._sup.reload(project)
