"""The supervisor: owns the agent threads and applies the human's commands.

It assembles the parts that each work alone (the scheduler, the inbox, the policy gate, the
resumer, the models, the workspaces) and hosts the agent loops (agent.LoopHost). Front ends
steer it through core/control.py's commands (spawn, pause, resume, kill, escalate, approve,
deny, reply, raise_budget, grant, revoke); each turns into events on the bus, so whatever
happened can be replayed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tower.core import llm
from tower.core import payloads as pl
from tower.core.admission import CallGate, LoopLag
from tower.core.agent import AgentLoop
from tower.core.batchlane import BatchLane, window_state
from tower.core.budget import INF, Account, Ledger, Refusal, Reservation
from tower.core.bus import Bus
from tower.core.callworkers import WorkerPool, worker_count
from tower.core.events import Event, InboxKind, Resolution, ThreadState
from tower.core.inbox import AutoDecider, Inbox
from tower.core.messages import KINDS as CONVERSATION_KINDS
from tower.core.models import Models
from tower.core.policy import Action, Rule, Verdict
from tower.core.policygate import PolicyGate, check_minutes
from tower.core.project import (
    MCP_SEP,
    AgentSettings,
    CheckSettings,
    CompactionSettings,
    LaneSettings,
    Project,
    ProjectMeta,
    TaskSettings,
)
from tower.core.ratelimit import Use
from tower.core.responsecache import Responses
from tower.core.resumer import LogDigest, restart, restore_session, restore_thread
from tower.core.run import (
    CommandError,
    Decision,
    TaskCopy,
    ThreadRun,
    new_session_id,
    shed,
)
from tower.core.scheduler import Scheduler
from tower.core.state import TowerState, subtree
from tower.core.subagents import (
    results_text,
    spawn_request,
    spawned_text,
    wait_ids,
)
from tower.core.tasks import (
    FEED_AHEAD,
    dependencies,
    fill_after,
    next_copy,
    planned_copies,
    planned_count,
    planned_id,
    task_of,
)
from tower.core.tools import ToolError, Workspace
from tower.core.tools.shell import run_shell
from tower.core.workspaces import prepare, share_after, typed_folder

if TYPE_CHECKING:
    from tower.core.mcp import McpHub

log = logging.getLogger("tower.supervisor")

ApproveMode = Literal["all", "none"] | None


class Supervisor:
    def __init__(
        self,
        project: Project,
        bus: Bus,
        *,
        session_id: str | None = None,
        approve: ApproveMode = None,
        workspaces_dir: Path | None = None,
    ) -> None:
        self.project = project
        self.bus = bus
        self.session_id = session_id or new_session_id()
        self.approve_mode = approve
        self.workspaces_dir = workspaces_dir
        b = project.budget
        self.ledger = Ledger(
            session=Account(
                limit_usd=b.usd if b.usd is not None else INF,
                limit_tokens=b.tokens if b.tokens is not None else INF,
            )
        )
        self.runs: dict[str, ThreadRun] = {}
        # Task graphs: copies waiting for the threads their `after` names (resolved once) to end.
        self._held: dict[str, tuple[TaskCopy, list[str]]] = {}
        self._feed: Iterator[TaskCopy] | None = None  # the project's copies not spawned yet
        # Sub-agents: the child each spawn_agent call started (a resumed call finds it), and
        # each tree's shared workspace while it is being made (a child works in its root's).
        self._spawned_by: dict[str, str] = {}
        self._preparing: dict[str, asyncio.Task[Workspace]] = {}
        self._calls = itertools.count(1)
        self._idle = asyncio.Event()
        self._idle.set()
        self.models = Models(project)
        self.pool: WorkerPool | None = None  # worker processes that make the model calls
        self._responses: Responses | None = None  # the response cache, once it is on
        self._index: asyncio.Task[None] | None = None  # its index, made after a reload
        self.lanes: dict[str, BatchLane] = {}  # batch lanes in use, by name
        self._lane_timer: asyncio.TimerHandle | None = None  # a lane window's opening
        self._lane_at: datetime | None = None
        self._closing = False
        self._ended = 0
        self.policy = PolicyGate(bus, project.policy.rules())
        self.inbox = Inbox(bus, self.runs)
        self.mcp: McpHub | None = None
        self.scheduler = Scheduler(
            project.limits,
            lambda model: self.project.model_settings(model),
            paused=self._held_back,
            start=self._start,
            waiting=self._waiting,
        )
        bus.subscribe(self._fold_conversation)
        if approve is not None:
            AutoDecider(self.inbox, bus, approve)

    def _fold_conversation(self, ev: Event) -> None:
        """Each event of a live thread goes to its conversation (what its model is sent)."""
        if ev.thread is not None and ev.kind in CONVERSATION_KINDS:
            th = self.runs.get(ev.thread)
            if th is not None and th.conversation is not None:
                th.conversation.apply(ev)

    # --- session lifecycle --------------------------------------------------------------

    async def start(self, spawn_tasks: bool = True) -> None:
        """Registers prices, records the session start, and spawns the project's tasks."""
        await asyncio.to_thread(llm.load_litellm)
        self.models.register()
        await self._start_workers()
        await self._start_response_cache()
        self.calls.start()
        p = self.project
        store = self.bus.store
        meta = {"seed": p.project.seed, "approve": self.approve_mode}
        if store is not None:
            await store.create_session(self.session_id, p.name, str(p.root), time.time(), meta)
            store.start_writer(self.session_id)
        self._emit_started(spawn_tasks)
        try:
            await self.start_mcp()
        except Exception as exc:
            # The log says why the session ended before any thread ran.
            self.bus.emit(pl.SessionEnded(reason="failed to start", error=str(exc)))
            if store is not None:
                await store.end_session(self.session_id, "clean")
            self._closing = self.scheduler.closed = True
            await self.calls.stop()
            if self.pool is not None:
                await self.pool.stop()
            raise
        if spawn_tasks:
            self._feed = planned_copies(self.project)
            self._top_up()

    async def _start_response_cache(self) -> None:
        """The response cache's index, when the project turns the cache on (a reload that
        turns it on later makes it then, in the background: lookups work meanwhile)."""
        store = self.bus.store
        if self.project.cache.responses and store is not None and self._responses is None:
            await store.ensure_response_index()
            self._responses = Responses(store.answer_for, self.session_id)

    @property
    def responses(self) -> Responses | None:
        """The response cache while the project has it on ([cache] responses)."""
        cache = self.project.cache
        if not cache.responses or self.bus.store is None:
            return None
        if self._responses is None:  # turned on by a reload
            self._responses = Responses(self.bus.store.answer_for, self.session_id)
            self._index = asyncio.create_task(self.bus.store.ensure_response_index())
        self._responses.any_temperature = cache.any_temperature
        return self._responses

    async def _start_workers(self) -> None:
        """The worker processes `[limits] workers` asks for (none for a small project)."""
        limits = self.project.limits
        n = worker_count(limits.workers, limits.max_concurrent)
        if n and self.pool is None:
            pool = WorkerPool(n, self.models.registration())
            try:
                await pool.start()
            except OSError as exc:  # no process can be started here: calls stay in-process
                log.warning("cannot start worker processes (%s): calls run in-process", exc)
                await pool.stop()
                return
            self.pool = pool
            self.calls.other_lag = lambda: pool.lag_s

    def _top_up(self) -> None:
        """Spawns the project's next task copies while fewer than FEED_AHEAD (or twice
        max_concurrent) threads wait in the queue: a small project is queued whole at the
        start, a large one is fed as slots free, so a queued task costs a counter, not a
        thread. In one batch, so priority decides who starts among those queued."""
        feed = self._feed
        if feed is None or self._closing:
            return
        ahead = max(FEED_AHEAD, 2 * self.project.limits.max_concurrent)
        with self.scheduler.batch():
            while self.scheduler.queued < ahead:
                copy = next(feed, None)
                if copy is None:
                    self._feed = None
                    break
                self._spawn_or_hold(copy)
            self._announce_held()

    def _emit_started(self, spawn_tasks: bool) -> None:
        """SESSION_STARTED: the project, its caps and policy; `spawn_tasks` records the intent
        to run every task of the project, so a resume spawns those a crash kept unspawned."""
        p = self.project
        self.bus.emit(
            pl.SessionStarted(
                session=self.session_id,
                project=p.name,
                project_dir=str(p.root),
                budget_usd=p.budget.usd,
                budget_tokens=p.budget.tokens,
                max_concurrent=p.limits.max_concurrent,
                seed=p.project.seed,
                approve=self.approve_mode,
                policy=[r.to_dict() for r in self.policy.rules],
                spawn_tasks=spawn_tasks,
                tasks_planned=planned_count(p) if spawn_tasks else 0,
            )
        )

    def unspawned(self, state: TowerState, spawn_tasks: bool) -> Iterator[TaskCopy]:
        """The project's task copies a crash (or the feed) kept from being spawned, one at a
        time (none when the session did not mean to run the project's tasks)."""
        if not spawn_tasks:
            return iter(())
        return (c for c in planned_copies(self.project) if c.thread_id not in state.threads)

    async def resume_session(
        self, log: LogDigest, model: str | None = None, origin: dict[str, Any] | None = None
    ) -> int:
        """Continues a recorded session: every unfinished thread from its recorded messages.

        Returns how many threads were resumed. The bus must already hold the folded state and
        the last sequence number; spending so far is restored into the ledger from it. `log`:
        what the resume needs from the recorded log, gathered while it was folded.
        """
        await asyncio.to_thread(llm.load_litellm)
        self.models.register()
        await self._start_workers()
        await self._start_response_cache()
        self.calls.start()
        state = self.bus.state
        store = self.bus.store
        if not log.started:
            # Killed right after the session row was made: the log starts here, as start()
            # would have begun it (caps, policy, the intent to run every task).
            if store is not None:
                await store.reopen_session(self.session_id)
                store.start_writer(self.session_id)
            self._emit_started(True)
        restore_session(self.ledger, state.budget)
        if store is not None and not store.writing:
            await store.reopen_session(self.session_id)
            store.start_writer(self.session_id)
        await self.start_mcp()
        # The rules in force are this tower.toml's: the log says so for the policy view.
        self.policy.announce()
        self.policy.restore(log.rule_events)
        plans = log.plans()
        collected = log.collected
        self._spawned_by = log.spawned_by
        self.bus.emit(
            pl.SessionResumed.of(threads=[p.id for p in plans], pid=os.getpid(), **origin or {})
        )
        with self.scheduler.batch():
            for plan in plans:
                view = state.threads[plan.id]
                again = restart(plan, view, self.project, self.scheduler.next_order(), model)
                th = again.run
                if again.forked_from is not None:
                    self.models.price(th.model)
                    self.bus.emit(
                        pl.Escalated(
                            from_model=again.forked_from, to_model=th.model, trigger="fork"
                        ),
                        th.id,
                    )
                self.runs[th.id] = th
                restore_thread(self.ledger, th, view)
                if again.lost_usd:
                    # A call the crash cut off: the provider may have served and billed it, so
                    # it is booked at its reservation, apart, and counts against the caps.
                    self.bus.emit(
                        pl.LlmLost(
                            model=th.model,
                            reserved_usd=again.lost_usd,
                            reason="tower stopped during this call: possibly billed",
                        ),
                        th.id,
                    )
                    self.ledger.book(th.id, again.lost_usd)
                th.collected = collected.get(th.id, set())
                self.inbox.drop_recorded(th.id)
                th.state = ThreadState(view.state)
                up = state.threads.get(view.parent) if view.parent is not None else None
                if up is not None and up.state.ended:
                    # Its parent ended just before the crash: so does it, as it would have.
                    self.finish(th, ThreadState.KILLED, f"its parent {up.id} ended ({up.state})")
                    continue
                if plan.finished is not None:
                    # Its finish succeeded just before the crash: done, with that answer.
                    self.finish(th, ThreadState.DONE, "finished", answer=plan.finished)
                    continue
                if self.pause_requested(th) and self.approve_mode is not None:
                    # Headless: nobody is there to resume it, so the pause is lifted.
                    self._ask_pause(th, False)
                if self.pause_requested(th):  # the person paused it: it waits for them
                    self.set_state(th, ThreadState.PAUSED, "paused by the human")
                else:
                    self.set_state(th, ThreadState.QUEUED, "resumed")
                self.scheduler.enqueue(th)
            # Calls lost just now count against the session's cap too.
            self.ledger.session.spent_usd = state.budget.spent_usd + state.budget.lost_usd
            # Tasks the crash kept from being spawned run now: every task of the project runs
            # exactly once, however early the crash came.
            self._feed = self.unspawned(state, log.spawn_tasks)
            self._top_up()
            self._release_held()  # dependencies that ended before the crash
            self._announce_held()

            # New items and calls continue the log's numbering, never reusing an id.
            self.inbox.continue_numbering(log.last_item)
            self._calls = itertools.count(log.last_call + 1)
            if self._ended < len(self.runs) or self._held or self._feed is not None:
                self._idle.clear()
            else:
                self._idle.set()  # every resumed thread was already done (a finish just logged)
        return len(plans)

    def _task_of(self, task_id: str) -> tuple[TaskSettings, int | None] | None:
        return task_of(self.project, task_id)

    async def barrier(self) -> None:
        """Waits until every event emitted so far is committed (before a side effect)."""
        if self.bus.store is not None:
            await self.bus.store.flush()

    async def wait_idle(self) -> None:
        """Returns once every thread has ended."""
        await self._idle.wait()

    async def close(self, reason: str = "finished") -> None:
        """Stops every thread (without marking it killed: it may be resumed) and ends the log."""
        if self._closing:
            return
        self._closing = self.scheduler.closed = True
        self.policy.close()  # no grant ends (nor is recorded) once closing began
        tasks = []
        for th in self.runs.values():
            if th.task is not None and not th.task.done():
                th.task.cancel()
                tasks.append(th.task)
            self._release(th)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.calls.stop()
        for lane in self.lanes.values():
            await lane.close()
        if self._lane_timer is not None:
            self._lane_timer.cancel()
        if self.pool is not None:
            await self.pool.stop()
        gate = self.calls
        log.info(
            "call gate: limit %d, %d cuts, %d admitted, loop stalled %.1f s, worst lag %.0f ms",
            gate.limit,
            gate.aimd.cuts,
            gate.admitted,
            gate.lag.stalled,
            gate.lag.worst_s * 1000,
        )
        if self.mcp is not None:
            await self.mcp.close()
        self.bus.emit(pl.SessionEnded(reason=reason))
        store = self.bus.store
        if store is not None:
            await store.end_session(self.session_id, "clean")

    # --- spawning and scheduling --------------------------------------------------------

    def spawn(
        self,
        agent: str,
        prompt: str,
        *,
        task_id: str | None = None,
        title: str | None = None,
        model: str | None = None,
        priority: int = 0,
        budget_usd: float | None = None,
        workspace: str | None = None,
        script: list[dict[str, Any]] | None = None,
        answer: str | None = None,
        after: list[str] | None = None,
        parent: str | None = None,
        spawned_by: str | None = None,
        planned: bool = False,
    ) -> str:
        """Starts a new thread. `workspace` is a folder relative to the project root; unless
        it is the named task's own (checked when tower.toml was loaded), it must exist inside
        the root. Returns the thread's id: `task_id` (or the agent's name), made unique; a
        sub-agent's is its parent's followed by .1, .2..."""
        try:
            settings = self.project.agent(agent)
        except KeyError:
            raise CommandError(f"unknown agent {agent!r}") from None
        if workspace is not None:
            found = self._task_of(task_id) if task_id else None
            if found is None or found[0].workspace != workspace:
                self.workspace_folder(workspace)
        cascade = list(settings.cascade)
        if model is not None:
            ms = self.project.model_settings(model)
            problem = None
            if model not in cascade:
                problem = llm.check_model(model, ms.api_base, ms.api_key_env)
            if problem:
                raise CommandError(problem)
            cascade = [model, *[m for m in cascade if m != model]]
            self.models.price(model)
        if parent is not None:
            n = len(self.bus.state.threads[parent].children) + 1
            ids = (f"{parent}.{k}" for k in itertools.count(n))
            tid = next(t for t in ids if not self._taken(t))
        else:
            base = task_id or agent
            tid = base
            for k in itertools.count(2):
                if not self._taken(tid):
                    break
                tid = f"{base}-{k}"
        b = self.project.budget
        th = ThreadRun(
            id=tid,
            agent=settings,
            prompt=prompt,
            task_id=task_id or "",
            title=title or prompt.splitlines()[0][:80],
            cascade=cascade,
            priority=priority,
            order=self.scheduler.next_order(),
            workspace_src=(self.project.root / workspace) if workspace else None,
            script=script,
            default_answer=answer,
            budget_usd=budget_usd if budget_usd is not None else b.thread_usd,
            budget_tokens=b.thread_tokens,
            after=list(after or []),
            parent=parent,
        )
        self.runs[tid] = th
        self.ledger.open_thread(
            tid,
            th.budget_usd if th.budget_usd is not None else INF,
            th.budget_tokens if th.budget_tokens is not None else INF,
            parent=parent,
        )
        self._idle.clear()
        self.bus.emit(
            pl.ThreadSpawned(
                agent=agent,
                task=th.task_id,
                title=th.title,
                prompt=prompt,
                cascade=cascade,
                model=th.model,
                priority=priority,
                budget_usd=th.budget_usd,
                budget_tokens=th.budget_tokens,
                max_steps=settings.max_steps,
                after=list(after or []),
                parent=parent,
                spawned_by=spawned_by,
                planned=planned,
            ),
            tid,
        )
        if spawned_by is not None:
            self._spawned_by[spawned_by] = tid
        self.scheduler.enqueue(th)
        return tid

    def spawn_task(
        self,
        task_id: str,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        prompt: str | None = None,
    ) -> str:
        """Starts one more thread of a project task: its id pattern (review-2, or screen-N+1
        for a repeated task, {n} filled), workspace, script, answer, check, priority and
        budget. `prompt` and `budget_usd` replace the task's own. Returns the thread's id.

        A task of a graph spawned by hand starts now (the person chose to), its prompt
        filled with the answers of the threads it names that have them."""
        copy = self.task_copy(task_id)
        after = None
        if copy.task.after:
            after = dependencies(self.project, copy.task)
            threads = self.bus.state.threads
            answers = {d: threads[d].answer for d in after if d in threads}
            if prompt is None:
                prompt = fill_after(copy.prompt, self.project, answers)
        return self._spawn_copy(
            copy, model=model, budget_usd=budget_usd, prompt=prompt, after=after
        )

    def task_copy(self, task_id: str) -> TaskCopy:
        """What `spawn_task(task_id)` would start now (tasks.next_copy)."""
        return next_copy(self.project, task_id, self._kept)

    def _spawn_or_hold(self, copy: TaskCopy) -> None:
        """A task with `after` waits, unspawned, until what it names has ended."""
        if copy.task.after:
            self._held[copy.thread_id] = (copy, dependencies(self.project, copy.task))
        else:
            self._spawn_copy(copy, planned=True)

    def _announce_held(self) -> None:
        """The tasks that wait go in the state (the screen counts them; replay shows them)."""
        waiting = {
            tid: deps
            for tid, (_copy, deps) in self._held.items()
            if tid not in self.bus.state.waiting_tasks
        }
        if waiting:
            self.bus.emit(pl.TasksWaiting(waiting=waiting))

    def _release_held(self) -> None:
        """Spawns the waiting tasks whose dependencies have all ended, their answers filled
        into the prompt; under after_policy "all", one whose dependency did not finish well
        is recorded as skipped (spawned and ended at once, with the reason)."""
        threads = self.bus.state.threads
        for tid, (copy, deps) in list(self._held.items()):
            if tid not in self._held:
                continue  # released by a nested call (a skip ends a thread too)
            views = [threads.get(d) for d in deps]
            if any(v is None or not v.state.ended for v in views):
                continue
            del self._held[tid]
            ended = [v for v in views if v is not None]
            bad = [v for v in ended if v.state is not ThreadState.DONE]
            if bad and copy.task.after_policy == "all":
                more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
                why = ", ".join(f"{v.id} {v.state}" for v in bad[:3]) + more
                with self.scheduler.batch():
                    new = self._spawn_copy(copy, after=deps, planned=True)
                    self.finish(self.runs[new], ThreadState.SKIPPED, f"skipped: {why}")
                continue
            answers = {v.id: v.answer for v in ended}
            self._spawn_copy(
                copy,
                prompt=fill_after(copy.prompt, self.project, answers),
                after=deps,
                planned=True,
            )

    def _spawn_copy(
        self,
        copy: TaskCopy,
        *,
        model: str | None = None,
        budget_usd: float | None = None,
        prompt: str | None = None,
        after: list[str] | None = None,
        planned: bool = False,
    ) -> str:
        """The one way a project task becomes a thread (at start and when spawned later).
        `planned`: one of the project's task copies (the feed), not a spawn by hand."""
        task = copy.task
        return self.spawn(
            task.agent,
            prompt if prompt is not None else copy.prompt,
            task_id=copy.ref,
            title=copy.title,
            model=model,
            priority=task.priority,
            budget_usd=budget_usd if budget_usd is not None else copy.budget_usd,
            workspace=task.workspace,
            script=copy.script,
            answer=copy.answer,
            after=after,
            planned=planned,
        )

    def _taken(self, tid: str) -> bool:
        """A thread id in use: live here, or in the log (ended threads of a resumed session)."""
        return tid in self.runs or tid in self.bus.state.threads

    def _kept(self, tid: str) -> bool:
        """A thread id in use, or kept for a task copy the feed has yet to spawn: a task
        spawned by hand gets a number of its own, never one of the project's."""
        return self._taken(tid) or (self._feed is not None and planned_id(self.project, tid))

    def workspace_folder(self, rel: str) -> Path:
        """A typed workspace folder, relative to the project root: it must exist inside it."""
        return typed_folder(self.project, rel, self.workspaces_dir)

    def _start(self, th: ThreadRun) -> asyncio.Task[None]:
        return asyncio.create_task(self._run(th), name=f"thread:{th.id}")

    def _waiting(self, th: ThreadRun, why: str) -> None:
        """A thread told why it waits: for a model's slot (queued), for its rate limit."""
        self.set_state(th, ThreadState.QUEUED if th.task is None else ThreadState.RUNNING, why)

    async def _run(self, th: ThreadRun) -> None:
        try:
            th.workspace = await self._workspace_of(th)
            self.set_state(th, ThreadState.RUNNING)
            await AgentLoop(self, th).run()
            if not th.ended:
                self.finish(th, ThreadState.FAILED, "loop ended without an outcome")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("thread %s crashed", th.id)
            self.finish(th, ThreadState.FAILED, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if th.ended:
                shed(th)

    async def _workspace_of(self, th: ThreadRun) -> Workspace:
        """The thread's folder: its own, or, for a sub-agent, its tree's root's (made once,
        whichever of them starts first)."""
        root = th
        while root.parent is not None and root.parent in self.runs:
            root = self.runs[root.parent]
        if root.workspace is not None:
            return root.workspace
        job = self._preparing.get(root.id)
        if job is None:
            job = asyncio.ensure_future(asyncio.to_thread(self._prepare_workspace, root))
            self._preparing[root.id] = job
        try:
            ws = await asyncio.shield(job)
        finally:
            if job.done():  # kept only while it is being made: 10,000 threads hold none
                self._preparing.pop(root.id, None)
        root.workspace = ws
        return ws

    def _prepare_workspace(self, th: ThreadRun) -> Workspace:
        store = self.bus.store
        db = Path(store.path) if store is not None else None
        ws = prepare(th, self.project, self.workspaces_dir, self.session_id, db)
        if th.after and self.workspaces_dir is not None:
            share_after(ws.root, self.workspaces_dir / self.session_id, th.after)
        return ws

    # --- state, endings, inbox ----------------------------------------------------------

    def set_state(self, th: ThreadRun, state: ThreadState, reason: str = "", **extra: Any) -> None:
        if th.ended:
            return
        view = self.bus.state.threads.get(th.id)
        if th.state is state and view is not None and view.reason == reason and not extra:
            return
        th.state = state
        self.bus.emit(pl.ThreadStateChanged.of(state=str(state), reason=reason, **extra), th.id)

    def _release(self, th: ThreadRun) -> None:
        """Returns a thread's in-flight reservation, recording it so the log balances."""
        if th.reservation is not None:
            released = self.ledger.release(th.reservation)
            self.bus.emit(
                pl.LlmFailed(
                    call=th.call_id,
                    step=th.steps + 1,
                    model=th.model,
                    error="cancelled",
                    retryable=False,
                    attempt=0,
                    released_usd=released,
                ),
                th.id,
            )
            th.reservation = None

    def finish(
        self, th: ThreadRun, state: ThreadState, reason: str = "", answer: str | None = None
    ) -> None:
        """Ends a thread: releases budget, drops its inbox items, frees its slot."""
        if th.ended:
            return
        self._release(th)
        self.inbox.drop(th)
        th.escalation = None
        extra = {"answer": answer} if answer is not None else {}
        self.set_state(th, state, reason, **extra)
        th.state = state
        self.scheduler.dequeue(th)
        self.scheduler.free_slot(th)
        self._ended += 1
        if th.task is None:  # never started: nothing of it runs on (else its task sheds it)
            shed(th)
        if th.ended_event is not None:
            th.ended_event.set()
        self._end_children(th)
        self._release_held()
        self._top_up()
        if self._ended == len(self.runs) and not self._held and self._feed is None:
            self._idle.set()
        self.scheduler.pump()

    def _end_children(self, th: ThreadRun) -> None:
        """A thread's sub-agents end with it: none runs (and spends) out of sight."""
        for cid in self.bus.state.threads[th.id].children:
            child = self.runs.get(cid)
            if child is not None and not child.ended:
                task = child.task
                self.finish(child, ThreadState.KILLED, f"its parent {th.id} ended ({th.state})")
                if task is not None and not task.done():
                    task.cancel()

    def open_item(
        self, th: ThreadRun, kind: InboxKind, **data: Any
    ) -> tuple[str, asyncio.Future[Decision]]:
        return self.inbox.open(th, kind, **data)

    async def ask(
        self, th: ThreadRun, kind: InboxKind, wait_state: ThreadState, why: str, **data: Any
    ) -> Decision:
        """Puts an item in the inbox and waits for the human's (or the rule's) decision."""
        self.set_state(th, wait_state, why)
        _item, fut = self.open_item(th, kind, **data)
        decision = await fut
        self.set_state(th, ThreadState.RUNNING)
        return decision

    async def checkpoint(self, th: ThreadRun) -> bool:
        """Where pause and hand-to-human take effect: before each model call and tool call.

        Returns False when the thread ended while it waited here.
        """
        if th.escalation is not None:
            self.set_state(th, ThreadState.WAITING, "handed to the human")
            decision = await th.escalation
            th.escalation = None
            if decision.resolution is Resolution.DENIED:
                who = "the human" if decision.by == "human" else decision.by
                note = f": {decision.text}" if decision.text else ""
                self.finish(th, ThreadState.FAILED, f"stopped by {who}{note}")
                return False
            if decision.resolution is Resolution.ANSWERED and decision.text:
                th.guidance.append(decision.text)
        while self.pause_requested(th) and not th.ended:
            self.set_state(th, ThreadState.PAUSED, "paused by the human")
            th.resume = asyncio.Event()  # made when needed: most threads never pause
            await th.resume.wait()
        if th.ended:
            return False
        self.set_state(th, ThreadState.RUNNING)
        return True

    def prompt_bound(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tools_chars: int,
    ) -> int:
        return self.models.prompt_bound(model, messages, tools, tools_chars)

    def price(self, model: str) -> llm.Price | None:
        return self.models.price(model)

    async def rate_gate(self, th: ThreadRun, model: str, tokens: int) -> Use | None:
        """Waits until a call of `tokens` fits the model's rpm/tpm caps (the scheduler's)."""
        use = await self.scheduler.rate_gate(th, model, tokens)
        if use is not None:
            self.set_state(th, ThreadState.RUNNING)
        return use

    # --- lanes ---------------------------------------------------------------------------

    def _lane(self, th: ThreadRun) -> tuple[str | None, LaneSettings | None]:
        """The lane the thread's task names (else the project's), and its settings."""
        p = self.project
        if not p.lanes and p.project.lane is None and not any(t.lane for t in p.tasks):
            return None, None  # no lanes at all: asked on every call, answered at once
        found = self._task_of(th.task_id)
        name = (found[0].lane if found is not None else None) or p.project.lane
        return name, p.lane(name)

    def lane_of(self, th: ThreadRun) -> str | None:
        """The batch lane the thread's calls take, or None for the ordinary way."""
        name, settings = self._lane(th)
        return name if settings is not None and settings.batch else None

    def lane_closed(self, th: ThreadRun) -> datetime | None:
        """When the thread's lane next opens, if its window is closed now (else None)."""
        _name, settings = self._lane(th)
        if settings is None or settings.window is None:
            return None
        _open, opens = window_state(settings.minutes(), datetime.now())
        return opens

    def _held_back(self, th: ThreadRun) -> bool:
        """Not to be started now: a pause was asked for, or its lane's window is closed (the
        queue then says when it opens, and a timer starts it then)."""
        if self.pause_requested(th):
            return True
        opens = self.lane_closed(th)
        if opens is None:
            return False
        reason = f"lane opens at {opens:%H:%M}"
        view = self.bus.state.threads.get(th.id)
        if view is not None and view.reason != reason:
            self.set_state(th, ThreadState.QUEUED, reason)
        self._wake_at(opens)
        return True

    def _wake_at(self, when: datetime) -> None:
        """Pumps the queue when a lane's window opens (the earliest one asked for)."""
        if self._lane_timer is not None and self._lane_at is not None and self._lane_at <= when:
            return
        if self._lane_timer is not None:
            self._lane_timer.cancel()
        delay = max((when - datetime.now()).total_seconds(), 0.0) + 0.2
        self._lane_at = when
        self._lane_timer = asyncio.get_running_loop().call_later(delay, self._lane_opened)

    def _lane_opened(self) -> None:
        self._lane_timer = self._lane_at = None
        self.scheduler.pump()

    def batch_price(self, model: str) -> llm.Price | None:
        return self.models.batch_price(model)

    async def batch_call(
        self,
        th: ThreadRun,
        lane: str,
        call: str,
        model: str,
        tools: list[dict[str, Any]],
        max_tokens: int,
        attempt: int,
    ) -> llm.CallResult:
        """The call, in the lane's next batch; the thread waits on the batch meanwhile."""
        batches = self.lanes.get(lane)
        if batches is None:
            settings = self.project.lane(lane)
            assert settings is not None
            batches = self.lanes[lane] = BatchLane(lane, settings, self.bus.emit, self._on_batch)
        endpoint = self.models.endpoint(model)
        try:
            return await batches.call(
                th.id,
                call,
                model,
                th.messages,
                tools,
                max_tokens,
                th.agent.temperature,
                self.models.sim_metadata(th, attempt),
                endpoint,
            )
        finally:
            if th.state is ThreadState.WAITING and not th.ended:
                self.set_state(th, ThreadState.RUNNING)

    def _on_batch(self, tid: str, reason: str) -> None:
        th = self.runs.get(tid)
        if th is not None and not th.ended:
            self.set_state(th, ThreadState.WAITING, reason)

    async def admit(self, th: ThreadRun) -> bool:
        """Holds a call slot for `th` (waiting at the gate while tower is loaded); False if
        the thread ended meanwhile. A pause asked for while waiting is honoured before the
        call, without holding the slot."""
        while True:
            await self.calls.acquire((-th.priority, th.order))
            if not self.pause_requested(th) and th.escalation is None and not th.ended:
                return True
            self.calls.release(ended=False)
            if not await self.checkpoint(th):
                return False

    def next_call_id(self) -> str:
        return f"c{next(self._calls)}"

    # --- commands -----------------------------------------------------------------------

    def _thread(self, tid: str) -> ThreadRun:
        th = self.runs.get(tid)
        if th is None:
            raise CommandError(f"no thread {tid!r}")
        return th

    def _live(self, tid: str) -> ThreadRun:
        th = self._thread(tid)
        if th.ended:
            raise CommandError(f"thread {tid} has already ended ({th.state})")
        return th

    def pause_requested(self, th: ThreadRun) -> bool:
        """The state holds pause requests (the screen and replay read them there)."""
        return self.bus.state.threads[th.id].pause_requested

    def _ask_pause(self, th: ThreadRun, requested: bool) -> None:
        if self.pause_requested(th) != requested:
            self.bus.emit(pl.PauseRequested(requested=requested), th.id)

    def pause(self, tid: str) -> None:
        th = self._live(tid)
        self._ask_pause(th, True)
        if th.task is None:  # still queued: it stays out of the queue's way
            self.set_state(th, ThreadState.PAUSED, "paused by the human")

    def resume(self, tid: str) -> None:
        th = self._live(tid)
        self._ask_pause(th, False)
        if th.resume is not None:
            th.resume.set()
        if th.task is None:
            self.set_state(th, ThreadState.QUEUED)
            self.scheduler.pump()

    def pause_all(self) -> None:
        for th in self.runs.values():
            if not th.ended and not self.pause_requested(th):
                self.pause(th.id)

    def resume_all(self) -> None:
        for th in self.runs.values():
            if not th.ended and self.pause_requested(th):
                self.resume(th.id)

    def kill(self, tid: str, reason: str = "killed by the human") -> None:
        """Cancels at once: the task is cancelled and its budget and inbox items released."""
        th = self._live(tid)
        task = th.task
        self.finish(th, ThreadState.KILLED, reason)
        if task is not None and not task.done():
            task.cancel()

    def escalate(self, tid: str, to: Literal["model", "human"] = "model", note: str = "") -> str:
        """Moves the thread to its cascade's next model, or hands it to the human.

        Returns the new model, or the inbox item id when handed to the human (which also
        happens when the cascade has no stronger model left).
        """
        th = self._live(tid)
        # One escalation per trouble: the loop and error counters start again.
        th.recent_calls.clear()
        th.error_streak = 0
        if to == "model" and th.model_index + 1 < len(th.cascade):
            old = th.model
            th.model_index += 1
            self.scheduler.move_slot(th)
            self.models.price(th.model)
            self.bus.emit(
                pl.Escalated(from_model=old, to_model=th.model, trigger=note or "human"), th.id
            )
            return th.model
        if th.escalation is not None:
            raise CommandError(f"thread {tid} is already waiting for the human")
        why = note or (
            "asked by the human" if to == "human" else "no stronger model left in the cascade"
        )
        item, fut = self.open_item(
            th,
            InboxKind.ESCALATION,
            reason=why,
            model=th.model,
            last_output=self.bus.state.threads[th.id].tail[-500:],
            next_model=th.cascade[th.model_index + 1]
            if th.model_index + 1 < len(th.cascade)
            else None,
            est_escalation_usd=self.escalation_estimate(th),
            est_human_minutes=round(self.human_minutes_estimate(), 2),
        )
        th.escalation = fut
        self.bus.emit(pl.Escalated(from_model=th.model, to_model="human", trigger=why), th.id)
        return item

    def escalation_estimate(self, th: ThreadRun) -> float | None:
        """What moving this thread to its next model would cost: the work so far, re-priced
        at the next model's prices. None without a next model or a known price."""
        if th.model_index + 1 >= len(th.cascade):
            return None
        nxt = self.price(th.cascade[th.model_index + 1])
        if nxt is None:
            return None
        view = self.bus.state.threads[th.id]
        cur = self.price(th.model)
        if cur is not None and cur.cost(1000, 100) > 0 and view.cost_usd > 0:
            return round(view.cost_usd * nxt.cost(1000, 100) / cur.cost(1000, 100), 6)
        return round(nxt.cost(view.tokens, 0), 6)

    def human_minutes_estimate(self) -> float:
        """How long a decision takes the human: this session's average, else two minutes."""
        state = self.bus.state
        if state.decisions:
            return state.human_seconds / state.decisions / 60
        return 2.0

    def auto_escalate(self, th: ThreadRun, trigger: str) -> None:
        """A quality trigger (failed check, loop, errors): the next model if it is worth it,
        else the human, with both prices in the inbox item."""
        if th.ended:
            return
        limit = th.agent.max_escalation_usd
        est = self.escalation_estimate(th)
        has_next = th.model_index + 1 < len(th.cascade)
        if has_next and (limit is None or est is None or est <= limit):
            self.escalate(th.id, "model", note=trigger)
            return
        if th.escalation is not None:
            return
        if not has_next:
            why = f"{trigger}; no stronger model left in the cascade"
        else:
            why = f"{trigger}; escalating would cost about ${est:.4f}, over the ${limit:g} limit"
        self.escalate(th.id, "human", note=why)

    def check_of(self, th: ThreadRun) -> CheckSettings | None:
        found = self._task_of(th.task_id) if th.task_id else None
        return found[0].check if found else None

    def _owner(self, item: str) -> tuple[ThreadRun, InboxKind, asyncio.Future[Decision]]:
        return self.inbox.owner(item)

    def approve(
        self,
        item: str,
        args: dict[str, Any] | None = None,
        comment: str | None = None,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        self.inbox.approve(item, args, comment, by, attention_s, batch)

    def deny(
        self,
        item: str,
        comment: str | None = None,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        self.inbox.deny(item, comment, by, attention_s, batch)

    def reply(
        self,
        target: str,
        text: str,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        """Answers a question or escalation item; on a thread id, attaches a comment."""
        if self.inbox.knows(target):
            self.inbox.answer(target, text, by, attention_s, batch)
            return
        th = self._live(target)
        th.guidance.append(text)
        self.bus.emit(pl.Comment(text=text, by=by), th.id)

    def raise_budget(
        self,
        target: str | None,
        usd: float = 0.0,
        tokens: int = 0,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        """Raises a thread's or the session's caps; on a budget item, the cap that refused.

        Raising the session's cap wakes every thread the session cap had stopped, not only
        the one whose item was chosen: each retries its reservation, and one that still does
        not fit asks again. (Before, the other threads stayed paused holding their slots.)
        """
        if usd < 0 or tokens < 0:
            raise CommandError("a budget can only be raised")
        item = None
        scope_thread: str | None = None
        if target is not None and self.inbox.knows(target):
            th, kind, _ = self._owner(target)
            if kind is not InboxKind.BUDGET:
                raise CommandError(f"{target} is not a budget request")
            item = target
            data = self.bus.state.inbox[target].data
            scope_thread = th.id if data.get("scope") == "thread" else None
            if data.get("scope") == "subtree":  # an ancestor's cap refused: raise that one
                scope_thread = str(data.get("account"))
            if not usd and not tokens:
                usd = float(data.get("suggest_usd", 0.0))
                tokens = int(data.get("suggest_tokens", 0))
        elif target is not None:
            scope_thread = self._thread(target).id
        self.ledger.raise_limit(scope_thread, usd, tokens)
        self.bus.emit(
            pl.BudgetRaised(
                scope="thread" if scope_thread else "session", usd=usd, tokens=tokens, by=by
            ),
            scope_thread,
        )
        woken = [item] if item is not None else []
        # Every thread the raised cap had stopped wakes: the session's, or (a subtree's cap)
        # each descendant stopped by that same ancestor.
        woken += [
            i.id
            for i in list(self.bus.state.inbox.values())
            if i.kind is InboxKind.BUDGET
            and i.id != item
            and self.inbox.knows(i.id)
            and (
                i.data.get("scope") == "session"
                if scope_thread is None
                else i.data.get("scope") == "subtree" and i.data.get("account") == scope_thread
            )
        ]
        share = attention_s / len(woken) if attention_s is not None and woken else None
        if batch is None and len(woken) > 1:
            batch = woken[0]  # one decision, however many threads it wakes
        for one in woken:
            self.inbox.decide(one, Decision(Resolution.RAISED, by, None, None, share, batch))

    # --- policy -------------------------------------------------------------------------

    def reload(self, project: Project) -> None:
        """An edited tower.toml: its policy and model limits apply from now on (recorded)."""
        self.project = project
        self.scheduler.limits = project.limits
        self.scheduler.reset_rates()
        self.models.reload(project)
        self.policy.set_rules(project.policy.rules())

    def policy_rules(self) -> tuple[list[Rule], list[Rule]]:
        """The project's rules, and the time-boxed grants still in force."""
        return self.policy.in_force()

    def judge(self, th: ThreadRun, tool: str, args: dict[str, Any]) -> Verdict:
        root = str(th.workspace.root) if th.workspace is not None else None
        return self.policy.judge(th.agent.name, root, tool, args)

    def grant(
        self,
        tool: str,
        args: dict[str, str] | None = None,
        *,
        agent: str | None = None,
        minutes: float = 10.0,
        item: str | None = None,
        by: str = "human",
    ) -> str:
        """Adds a time-boxed allow rule; approves the waiting calls it covers. Returns its id.

        With an item, the grant is "allow calls like this one": the item is approved even if
        the globs were narrowed past it, since the human decided on it in the same keystroke.
        """
        check_minutes(minutes)
        if item is not None:  # checked before anything is recorded
            _th, kind, _fut = self._owner(item)
            if kind is not InboxKind.APPROVAL:
                raise CommandError(f"{item} is not a tool approval")
        rule = self.policy.grant(tool, args, agent=agent, minutes=minutes, item=item, by=by)
        if item is not None:
            self.approve(item, comment=None, by=by)
        self._approve_covered()
        return rule.id

    def revoke(self, rid: str) -> None:
        self.policy.revoke(rid)

    def _approve_covered(self) -> None:
        """Approves waiting approvals that the rules in force now allow (after a grant)."""
        for th, item in self.inbox.waiting(InboxKind.APPROVAL):
            data = self.bus.state.inbox[item].data
            if data.get("interrupted") or "tool" not in data:
                continue
            verdict = self.judge(th, data["tool"], data.get("args") or {})
            if verdict.action is Action.ALLOW and verdict.rule is not None:
                self.inbox.decide(item, Decision(Resolution.APPROVED, f"rule {verdict.rule.id}"))

    # --- running tools ------------------------------------------------------------------

    def tools_for(self, agent: AgentSettings) -> list[dict[str, Any]]:
        """The tool schemas a thread of this agent is offered: built-ins and its MCP servers'."""
        from tower.core.tools import tool_schemas

        out = tool_schemas(agent.tools)
        if self.mcp is not None:
            out += self.mcp.schemas(agent.mcp)
        return out

    def has_tool(self, agent: AgentSettings, name: str) -> bool:
        if name in agent.tools:
            return True
        server, sep, _ = name.partition(MCP_SEP)
        return bool(sep) and server in agent.mcp and self.mcp is not None and self.mcp.has(name)

    async def run_tool(
        self, th: ThreadRun, name: str, args: dict[str, Any], call_id: str = ""
    ) -> str:
        """Carries out an allowed call; a ToolError's message goes back to the model."""
        if name == "spawn_agent":
            return self.spawn_agent(th, args, call_id)
        if name == "wait_agents":
            return await self.wait_agents(th, args)
        if MCP_SEP in name and name not in th.agent.tools:
            if self.mcp is None:
                raise ToolError(f"no MCP server offers {name!r}")
            return await self.mcp.call(name, args)
        if th.workspace is None:
            raise ToolError("this thread has no workspace")
        if name == "run_shell":
            shell = self.project.shell
            return await run_shell(
                args.get("command"),
                th.workspace.root,
                timeout_s=shell.timeout_s,
                max_output_bytes=shell.max_output_bytes,
            )
        return await th.workspace.run(name, args)

    # --- sub-agents ---------------------------------------------------------------------

    def spawn_agent(self, th: ThreadRun, args: dict[str, Any], call_id: str = "") -> str:
        """A thread starts a child: its reservations count against this thread's cap, every
        ancestor's and the session's. A resumed call finds the child it already started."""
        view = self.bus.state.threads[th.id]
        room = self.ledger.room_usd(th.id)
        existing = self._spawned_by.get(call_id) if call_id else None
        if existing is not None:
            return spawned_text(existing, self.bus.state.threads[existing].budget_usd, room)
        req = spawn_request(args, view, th.agent.name, self.project, room)
        try:
            child = self.spawn(
                req.agent,
                req.prompt,
                title=req.title,
                model=req.model,
                priority=th.priority,
                budget_usd=req.budget_usd,
                parent=th.id,
                spawned_by=call_id or None,
            )
        except CommandError as exc:
            raise ToolError(str(exc)) from None
        return spawned_text(child, req.budget_usd, room)

    async def wait_agents(self, th: ThreadRun, args: dict[str, Any]) -> str:
        """Waits until the named children (default: those not waited for yet) have ended;
        the thread says what it waits on meanwhile, and holds no call slot."""
        threads = self.bus.state.threads
        ids = wait_ids(args, threads[th.id], th.collected)
        while True:
            live = [self.runs[c] for c in ids if c in self.runs and not self.runs[c].ended]
            if not live:
                break
            self.set_state(
                th,
                ThreadState.RUNNING,
                f"waiting on {len(live)} of {len(ids)} sub-agent(s): "
                + ", ".join(r.id for r in live[:3])
                + (" …" if len(live) > 3 else ""),
            )
            waits = [asyncio.ensure_future(r.on_end().wait()) for r in live]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        self.set_state(th, ThreadState.RUNNING)
        th.collected.update(ids)
        return results_text(threads[c] for c in ids)

    def tree(self, tid: str) -> list[str]:
        """A thread's subtree's live threads (what a screen verb on the subtree acts on)."""
        if tid not in self.bus.state.threads:
            raise CommandError(f"no thread {tid!r}")
        return [
            t for t in subtree(self.bus.state, tid) if t in self.runs and not self.runs[t].ended
        ]

    def pause_tree(self, tid: str) -> int:
        """Pauses every live thread of the subtree; how many were paused."""
        todo = [t for t in self.tree(tid) if not self.pause_requested(self.runs[t])]
        for t in todo:
            self.pause(t)
        return len(todo)

    def resume_tree(self, tid: str) -> int:
        todo = [t for t in self.tree(tid) if self.pause_requested(self.runs[t])]
        for t in todo:
            self.resume(t)
        return len(todo)

    def kill_tree(self, tid: str) -> int:
        """Kills the subtree's root (its descendants end with it); how many ended."""
        live = self.tree(tid)
        if tid in live:
            self.kill(tid)
        else:
            for t in live:
                if not self.runs[t].ended:
                    self.kill(t)
        return len(live)

    def escalate_tree(self, tid: str) -> int:
        """Moves every live thread of the subtree that has a stronger model onto it."""
        moved = 0
        for t in self.tree(tid):
            th = self.runs[t]
            if th.model_index + 1 < len(th.cascade):
                self.escalate(t, "model", note="subtree escalated by the human")
                moved += 1
        if not moved:
            raise CommandError(f"no thread of {tid}'s subtree has a stronger model left")
        return moved

    async def start_mcp(self) -> None:
        """Starts the project's MCP servers and lists their tools (before any thread runs)."""
        if not self.project.mcp_servers or self.mcp is not None:
            return
        from tower.core.mcp import McpHub

        self.mcp = McpHub(self.project, self.bus)
        await self.mcp.start()

    # --- the agent loop's host (agent.LoopHost) ------------------------------------------

    @property
    def calls(self) -> CallGate:
        """The gate every model call passes (its figures show in the budget bar)."""
        return self.scheduler.calls

    @property
    def settings(self) -> ProjectMeta:
        return self.project.project

    @property
    def lag(self) -> LoopLag:
        return self.calls.lag

    def emit(self, payload: pl.Payload, thread: str | None = None, /) -> Event:
        return self.bus.emit(payload, thread)

    def release_slot(self, ended: bool) -> None:
        self.calls.release(ended=ended)

    def release(self, res: Reservation) -> float:
        return self.ledger.release(res)

    def settle(self, res: Reservation, usd: float, tokens: int) -> None:
        self.ledger.settle(res, usd, tokens)

    def endpoint(self, model: str) -> dict[str, Any]:
        return self.models.endpoint(model)

    def tokenizer(self, model: str) -> Any:
        return self.models.tokenizer(model)

    @property
    def compaction(self) -> CompactionSettings:
        return self.project.compaction

    def context_window(self, model: str) -> int | None:
        return self.models.context_window(model)

    def compaction_metadata(self, th: ThreadRun, model: str) -> dict[str, Any] | None:
        return self.models.compaction_metadata(th, model)

    def mcp_tool_names(self, agent: AgentSettings) -> list[str]:
        return list(self.mcp.names(agent.mcp)) if self.mcp is not None else []

    def reserve(self, th: ThreadRun, usd: float, tokens: int) -> Reservation | Refusal:
        return self.ledger.reserve(th.id, usd, tokens)

    def sim_metadata(self, th: ThreadRun, attempt: int) -> dict[str, Any] | None:
        return self.models.sim_metadata(th, attempt)
