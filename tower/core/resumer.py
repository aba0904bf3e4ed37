"""The resumer: a recorded thread's plan (resume.rebuild) turned back into a live run.

`rebuild` reads the log; this module decides, per thread, how it continues under today's
project: its agent's settings, its cascade (a fork onto another model puts that model in
front), the task's workspace, script and default answer, and what the ledger must hold
before anything runs (its spending so far, plus any call a crash cut off). Pure functions:
the supervisor records the events and queues the runs. LogDigest gathers what a resume
needs from the log in the same pass that folds it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tower.core.budget import INF, Ledger
from tower.core.events import Event, EventKind
from tower.core.items import fill_item
from tower.core.project import Project
from tower.core.resume import Rebuilder, ThreadPlan
from tower.core.run import CommandError, ThreadRun, fill, id_number
from tower.core.state import BudgetView, ThreadView
from tower.core.subagents import collect
from tower.core.tasks import item_of, script_of, task_of


@dataclass(frozen=True, slots=True)
class Restart:
    run: ThreadRun
    forked_from: str | None  # the model the log had, when a fork moved it to another
    lost_usd: float  # a call in flight at the crash, booked at its reservation


def restart(
    plan: ThreadPlan, view: ThreadView, project: Project, order: int, model: str | None = None
) -> Restart:
    """The live run that continues `plan`; `model`: a fork onto that model."""
    try:
        settings = project.agent(view.agent)
    except KeyError:
        raise CommandError(f"agent {view.agent!r} is no longer in the project") from None
    found = task_of(project, view.task)
    cascade = list(view.cascade)
    forked_from = None
    if model is not None and model != plan.model:
        if model not in cascade:
            at = cascade.index(plan.model) if plan.model in cascade else 0
            cascade.insert(at, model)
        forked_from, plan.model = plan.model, model
    task = found[0] if found else None
    item = item_of(project, *found) if found else None  # an items file's copy: its fields
    run = ThreadRun(
        id=plan.id,
        agent=settings,
        prompt=plan.spawned.get("prompt", view.title),
        task_id=view.task,
        title=view.title,
        cascade=cascade,
        priority=view.priority,
        order=order,
        workspace_src=(project.root / task.workspace) if task and task.workspace else None,
        script=fill_item(script_of(*found), item) if found else None,
        default_answer=fill_item(fill(task.answer, found[1]), item) if found and task else None,
        budget_usd=view.budget_usd,
        budget_tokens=view.budget_tokens,
        model_index=cascade.index(plan.model) if plan.model in cascade else 0,
        conversation=plan.conversation,
        steps=plan.steps,
        pending=plan.pending,
        interrupted=plan.interrupted,
        guidance=plan.guidance,
        after=list(view.after),
        parent=view.parent,
    )
    return Restart(run, forked_from, view.reserved_usd)


def restore_session(ledger: Ledger, budget: BudgetView) -> None:
    """The session's caps and spending as the log left them (lost calls count as spent)."""
    acct = ledger.session
    acct.limit_usd = budget.limit_usd if budget.limit_usd is not None else INF
    acct.limit_tokens = budget.limit_tokens if budget.limit_tokens is not None else INF
    acct.spent_usd = budget.spent_usd + budget.lost_usd
    acct.spent_tokens = budget.tokens


def restore_thread(ledger: Ledger, run: ThreadRun, view: ThreadView) -> None:
    """A resumed thread's account: its caps and what its subtree spent, lost calls included
    (a parent's account holds its descendants' spending, ended ones' too). Restore parents
    first; a call this crash cut off is booked after, with `Ledger.book`, so it reaches
    every ancestor's account as well."""
    parent = run.parent if run.parent in ledger.threads else None
    ledger.open_thread(
        run.id,
        run.budget_usd if run.budget_usd is not None else INF,
        run.budget_tokens if run.budget_tokens is not None else INF,
        parent=parent,
    )
    acct = ledger.threads[run.id]
    acct.spent_usd = view.subtree_usd
    acct.spent_tokens = view.subtree_tokens


class LogDigest:
    """Everything a resume needs from a recorded log, gathered in the one pass that folds
    it, so the log is never held whole: held as a list, a 650,000-event log doubled a
    resumed fleet's memory (1.4 GB instead of its 600 MB) for as long as the fold lasted."""

    def __init__(self, system_prompts: dict[str, str]) -> None:
        self.rebuilder = Rebuilder(system_prompts)
        self.started = False  # the log has its session_started
        self.spawn_tasks = True  # ...and that session meant to run the project's tasks
        self.rule_events: list[Event] = []  # grants and their ends, for the policy gate
        self.last_item = 0  # the highest inbox item number: new items continue after it
        self.last_call = 0  # the highest call number: new calls continue after it
        self.collected: dict[str, set[str]] = {}  # children a recorded wait_agents gave
        self.spawned_by: dict[str, str] = {}  # spawn_agent call id -> the child it started

    def feed(self, ev: Event) -> None:
        self.rebuilder.feed(ev)
        kind = ev.kind
        if kind is EventKind.LLM_STARTED:
            self.last_call = max(self.last_call, id_number(ev.payload.get("call")))
        elif kind is EventKind.THREAD_SPAWNED:
            by = ev.payload.get("spawned_by")
            if by and ev.thread is not None:
                self.spawned_by[str(by)] = ev.thread
        elif kind is EventKind.TOOL_RESULT:
            collect(self.collected, ev)
        elif kind is EventKind.INBOX_OPENED:
            self.last_item = max(self.last_item, id_number(ev.payload.get("item")))
        elif kind in (EventKind.RULE_GRANTED, EventKind.RULE_ENDED):
            self.rule_events.append(ev)
        elif kind is EventKind.SESSION_STARTED and not self.started:
            self.started = True
            self.spawn_tasks = bool(ev.payload.get("spawn_tasks", True))

    def plans(self) -> list[ThreadPlan]:
        return self.rebuilder.finish()


def digest(events: Iterable[Event], system_prompts: dict[str, str]) -> LogDigest:
    """A LogDigest of events already in hand (tests, small logs)."""
    d = LogDigest(system_prompts)
    for ev in events:
        d.feed(ev)
    return d
