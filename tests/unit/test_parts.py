"""The supervisor's parts, each driven alone: the scheduler, the inbox, the policy gate, the
resumer and the task helpers, and the agent loop behind a fake LoopHost. No Supervisor is
built here: every part gets only what its constructor or function asks for (a Bus without
a store, callbacks, a Project), which is what "testable alone" means."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tower.core.scheduler as scheduler_mod
from tower.core import llm, messages
from tower.core import payloads as pl
from tower.core.admission import LoopLag
from tower.core.agent import AgentLoop, LoopHost
from tower.core.budget import INF, Ledger, Refusal, Reservation
from tower.core.bus import Bus
from tower.core.events import Event, EventKind, InboxKind, Resolution, ThreadState
from tower.core.inbox import AutoDecider, Inbox, scripted_answer
from tower.core.policy import Action, Rule, Verdict
from tower.core.policygate import PolicyGate
from tower.core.project import (
    AgentSettings,
    CheckSettings,
    CompactionSettings,
    LimitSettings,
    ModelSettings,
    Project,
    ProjectMeta,
    parse_project,
)
from tower.core.ratelimit import Use
from tower.core.resume import ThreadPlan
from tower.core.resumer import digest, restart, restore_session, restore_thread
from tower.core.run import CommandError, Decision, ThreadRun, highest_number
from tower.core.scheduler import Scheduler
from tower.core.state import BudgetView, ThreadView
from tower.core.tasks import planned_copies, script_of, task_copy, task_of

WAIT_S = 10.0  # the cap on any wait for a condition (never a sleep that hopes)


def make_run(
    tid: str,
    *,
    priority: int = 0,
    order: int = 0,
    cascade: tuple[str, ...] = ("m",),
    agent: AgentSettings | None = None,
    script: list[dict[str, Any]] | None = None,
    default_answer: str | None = None,
) -> ThreadRun:
    return ThreadRun(
        id=tid,
        agent=agent or AgentSettings(name="coder"),
        prompt=f"prompt of {tid}",
        task_id=tid,
        title=f"title of {tid}",
        cascade=list(cascade),
        priority=priority,
        order=order,
        workspace_src=None,
        script=script,
        default_answer=default_answer,
        budget_usd=None,
        budget_tokens=None,
    )


def spawn(bus: Bus, th: ThreadRun) -> None:
    """Records the thread's spawn, so the bus's state has a view of it."""
    bus.emit(
        pl.ThreadSpawned(
            agent=th.agent.name,
            task=th.task_id,
            title=th.title,
            cascade=th.cascade,
            model=th.model,
            priority=th.priority,
        ),
        th.id,
    )


def of_kind(events: list[Event], kind: EventKind) -> list[Event]:
    return [e for e in events if e.kind is kind]


async def until(pred: Callable[[], bool]) -> None:
    """Yields to the loop until pred() holds (a condition, never a timed sleep)."""

    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), WAIT_S)


async def settled(fut: asyncio.Future[Decision]) -> Decision:
    return await asyncio.wait_for(fut, WAIT_S)


# --- scheduler ------------------------------------------------------------------------------


class Harness:
    """A scheduler with recording callbacks: who started (in order), who was told to wait."""

    def __init__(self, max_concurrent: int, models: dict[str, ModelSettings]) -> None:
        self.models = models
        self.started: list[str] = []
        self.waits: list[tuple[str, str]] = []
        self.paused: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.s = Scheduler(
            LimitSettings(max_concurrent=max_concurrent, adaptive=False),
            lambda model: self.models.get(model, ModelSettings()),
            paused=lambda th: th.id in self.paused,
            start=self._start,
            waiting=lambda th, why: self.waits.append((th.id, why)),
        )

    def _start(self, th: ThreadRun) -> asyncio.Task[None]:
        self.started.append(th.id)
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        self.tasks.append(task)
        return task

    def run(self, tid: str, priority: int = 0, model: str = "m") -> ThreadRun:
        return make_run(tid, priority=priority, order=self.s.next_order(), cascade=(model, "z"))


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(max_concurrent: int = 16, models: dict[str, ModelSettings] | None = None) -> Harness:
        h = Harness(max_concurrent, models or {})
        made.append(h)
        return h

    yield make
    for h in made:
        await asyncio.gather(*h.tasks)


async def test_scheduler_starts_higher_priority_first_then_spawn_order(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrent=2)
    runs = [h.run(f"t{i}", priority=p) for i, p in enumerate([0, 5, 0, 5])]
    with h.s.batch():
        for th in runs:
            h.s.enqueue(th)
        assert h.started == []  # nothing starts while the batch is being queued
    assert h.started == ["t1", "t3"]
    assert h.s.running == 2
    assert isinstance(runs[1].task, asyncio.Task)
    assert runs[0].task is None
    h.s.free_slot(runs[1])
    h.s.pump()
    assert h.started == ["t1", "t3", "t0"]
    h.s.free_slot(runs[3])
    h.s.pump()
    assert h.started == ["t1", "t3", "t0", "t2"]
    assert h.s.queue == []


async def test_scheduler_without_a_batch_starts_in_spawn_timing(
    harness: Callable[..., Harness],
) -> None:
    """The contrast to the batch: each enqueue pumps, so the first two spawned start."""
    h = harness(max_concurrent=2)
    for i, p in enumerate([0, 5, 0, 5]):
        h.s.enqueue(h.run(f"t{i}", priority=p))
    assert h.started == ["t0", "t1"]
    assert [key[2] for key in h.s.queue] == ["t3", "t2"]  # priority, then spawn order


async def test_scheduler_nested_batches_hold_until_the_outer_one_ends(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    with h.s.batch():
        with h.s.batch():
            h.s.enqueue(h.run("a"))
        assert h.started == []
    assert h.started == ["a"]


async def test_scheduler_model_cap_holds_its_threads_while_others_start(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrent=3, models={"slow": ModelSettings(max_concurrent=1)})
    a1, a2, b1 = h.run("a1", model="slow"), h.run("a2", model="slow"), h.run("b1", model="fast")
    with h.s.batch():
        for th in (a1, a2, b1):
            h.s.enqueue(th)
    assert h.started == ["a1", "b1"]
    assert ("a2", "waiting for a slow slot (1)") in h.waits
    assert h.s.per_model["slow"] == 1
    assert h.s.per_model["fast"] == 1
    assert a1.slot_model == "slow"
    h.s.free_slot(a1)
    assert a1.slot_model is None
    assert h.s.per_model["slow"] == 0
    h.s.pump()
    assert h.started == ["a1", "b1", "a2"]


async def test_scheduler_skips_a_paused_thread_until_the_pause_is_lifted(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrent=2)
    h.paused.add("hi")
    with h.s.batch():
        h.s.enqueue(h.run("hi", priority=9))
        h.s.enqueue(h.run("lo", priority=0))
    assert h.started == ["lo"]  # a paused thread does not block those behind it
    assert h.waits == []  # nor is it told it waits for a slot: it is paused
    h.s.pump()
    assert h.started == ["lo"]
    h.paused.clear()
    h.s.pump()
    assert h.started == ["lo", "hi"]


async def test_scheduler_dequeue_removes_a_queued_thread(harness: Callable[..., Harness]) -> None:
    h = harness(max_concurrent=1)
    t0, t1, t2 = h.run("t0"), h.run("t1"), h.run("t2")
    for th in (t0, t1, t2):
        h.s.enqueue(th)
    assert h.started == ["t0"]
    h.s.dequeue(t1)
    h.s.dequeue(t1)  # twice, or a thread not queued: nothing happens
    h.s.dequeue(t0)
    assert [key[2] for key in h.s.queue] == ["t2"]
    assert h.s.running == 1  # dequeuing a running thread does not give its slot back
    h.s.free_slot(t0)
    h.s.pump()
    assert h.started == ["t0", "t2"]
    h.s.free_slot(t2)
    h.s.pump()
    assert h.started == ["t0", "t2"]


async def test_scheduler_free_slot_counts_a_thread_once(harness: Callable[..., Harness]) -> None:
    h = harness()
    th = h.run("t")
    never = h.run("never")
    h.s.enqueue(th)
    h.s.free_slot(th)
    h.s.free_slot(th)
    h.s.free_slot(never)  # never started: holds no slot
    assert h.s.running == 0
    assert h.s.per_model["m"] == 0


async def test_scheduler_move_slot_counts_against_the_new_model(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrent=4, models={"m": ModelSettings(max_concurrent=1)})
    first, second = h.run("first"), h.run("second")
    h.s.enqueue(first)
    h.s.enqueue(second)
    assert h.started == ["first"]
    first.model_index = 1  # escalated from "m" to "z"
    h.s.move_slot(first)
    assert first.slot_model == "z"
    assert (h.s.per_model["m"], h.s.per_model["z"]) == (0, 1)
    assert h.s.running == 1
    h.s.pump()
    assert h.started == ["first", "second"]  # "m" has a free slot again
    h.s.free_slot(first)
    assert (h.s.per_model["m"], h.s.per_model["z"]) == (1, 0)


async def test_scheduler_starts_nothing_once_closed(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.s.closed = True
    h.s.enqueue(h.run("t"))
    h.s.pump()
    assert h.started == []


async def test_scheduler_call_gate_is_sized_by_the_limits_and_admits_by_priority(
    harness: Callable[..., Harness],
) -> None:
    h = harness(max_concurrent=2)
    gate = h.s.calls
    assert gate.limit == 2
    await gate.acquire()
    await gate.acquire()
    order: list[str] = []

    async def call(name: str, key: tuple[int, int]) -> None:
        await gate.acquire(key)
        order.append(name)

    low = asyncio.create_task(call("low", (0, 1)))
    high = asyncio.create_task(call("high", (-5, 2)))
    await until(lambda: gate.waiting == 2)  # both are at the gate
    assert order == []
    gate.release()
    await asyncio.wait_for(high, WAIT_S)
    assert order == ["high"]
    gate.release()
    await asyncio.wait_for(low, WAIT_S)
    assert order == ["high", "low"]


class FakeClock:
    """Stands in for the scheduler's `time.monotonic` and `asyncio.sleep`: sleeping moves
    the clock at once, so a minute's rate window passes without waiting for it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self.t += delay
        await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    # Only the scheduler module's names: the event loop keeps the real clock.
    monkeypatch.setattr(scheduler_mod, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(scheduler_mod, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


async def test_rate_gate_is_open_without_rpm_or_tpm(
    harness: Callable[..., Harness], clock: FakeClock
) -> None:
    h = harness()
    th = h.run("t")
    for _ in range(50):
        assert await h.s.rate_gate(th, "m", 10_000) is None
    assert clock.slept == []
    assert h.waits == []


async def test_rate_gate_waits_for_the_rpm_window(
    harness: Callable[..., Harness], clock: FakeClock
) -> None:
    h = harness(models={"m": ModelSettings(rpm=2)})
    th = h.run("t")
    first = await h.s.rate_gate(th, "m", 10)
    clock.t += 10
    second = await h.s.rate_gate(th, "m", 10)
    assert isinstance(first, Use) and isinstance(second, Use)
    assert (first.at, second.at) == (1000.0, 1010.0)
    assert clock.slept == []
    third = await h.s.rate_gate(th, "m", 10)
    assert clock.slept == [50.0]  # until the first call of the minute ages out
    assert third is not None and third.at == 1060.0
    assert h.waits == [("t", "waiting for m: 2 requests/min")]


async def test_rate_gate_waits_for_the_tpm_window_and_counts_corrected_tokens(
    harness: Callable[..., Harness], clock: FakeClock
) -> None:
    h = harness(models={"m": ModelSettings(tpm=100)})
    th = h.run("t")
    use = await h.s.rate_gate(th, "m", 80)
    assert use is not None
    use.tokens = 20  # the call really used 20 (the loop corrects the entry it was given)
    clock.t += 5
    await h.s.rate_gate(th, "m", 70)  # 20 + 70 fits: no wait
    assert clock.slept == []
    await h.s.rate_gate(th, "m", 30)  # 90 + 30 does not: wait until the first 20 age out
    assert clock.slept == [55.0]
    assert h.waits == [("t", "waiting for m: 100 tokens/min")]


async def test_reset_rates_applies_new_caps_from_the_next_call(
    harness: Callable[..., Harness], clock: FakeClock
) -> None:
    h = harness(models={"m": ModelSettings(rpm=1)})
    th = h.run("t")
    await h.s.rate_gate(th, "m", 1)
    h.models["m"] = ModelSettings(rpm=5)  # a reload raised the cap
    h.s.reset_rates()
    for _ in range(4):
        await h.s.rate_gate(th, "m", 1)
    assert clock.slept == []


# --- inbox ----------------------------------------------------------------------------------


class Desk:
    """An inbox on a store-less bus with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.bus = Bus(None, clock=lambda: self.now, secrets={})
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append)
        self.runs: dict[str, ThreadRun] = {}
        self.inbox = Inbox(self.bus, self.runs)

    def thread(self, tid: str = "t", **kw: Any) -> ThreadRun:
        th = make_run(tid, **kw)
        self.runs[tid] = th
        spawn(self.bus, th)
        return th

    def closed(self, item: str) -> dict[str, Any]:
        found = [e.payload for e in of_kind(self.events, EventKind.INBOX_CLOSED)]
        found = [p for p in found if p["item"] == item]
        assert len(found) == 1, found
        return found[0]


async def test_inbox_open_records_the_item_with_its_kind_fields() -> None:
    d = Desk()
    th = d.thread()
    d.bus.state.threads["t"].cost_usd = 0.12345678
    item, fut = d.inbox.open(
        th, InboxKind.APPROVAL, tool="write_file", args={"path": "a.txt"}, reason="needs it"
    )
    assert item == "i1"
    rec = d.bus.state.inbox["i1"]
    assert rec.kind is InboxKind.APPROVAL
    assert rec.thread == "t"
    assert rec.created == 100.0
    assert rec.data["tool"] == "write_file"
    assert rec.data["args"] == {"path": "a.txt"}
    assert rec.data["reason"] == "needs it"
    assert rec.data["cost_so_far"] == 0.123457
    assert d.bus.state.threads["t"].pending == 1
    assert th.items["i1"] == (InboxKind.APPROVAL, fut)
    assert not fut.done()
    assert d.inbox.knows("i1") and d.inbox.is_open("i1")
    item2, _ = d.inbox.open(th, InboxKind.QUESTION, question="Which one?")
    assert item2 == "i2"
    assert d.bus.state.inbox["i2"].data["question"] == "Which one?"


async def test_inbox_approve_refuses_budget_and_question_items() -> None:
    d = Desk()
    th = d.thread()
    budget, _ = d.inbox.open(th, InboxKind.BUDGET, scope="thread")
    question, _ = d.inbox.open(th, InboxKind.QUESTION, question="?")
    with pytest.raises(CommandError, match="asks for budget: raise it or decline"):
        d.inbox.approve(budget)
    with pytest.raises(CommandError, match="is a question: reply to it"):
        d.inbox.approve(question)
    assert d.inbox.is_open(budget) and d.inbox.is_open(question)
    assert of_kind(d.events, EventKind.INBOX_CLOSED) == []


async def test_inbox_deny_declines_a_budget_item_and_denies_an_approval() -> None:
    d = Desk()
    th = d.thread()
    budget, bfut = d.inbox.open(th, InboxKind.BUDGET, scope="thread")
    approval, afut = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    d.inbox.deny(budget, "no more money")
    d.inbox.deny(approval)
    assert (await settled(bfut)).resolution is Resolution.DECLINED
    assert (await settled(bfut)).text == "no more money"
    assert (await settled(afut)).resolution is Resolution.DENIED
    assert d.closed(budget)["resolution"] == "declined"
    assert d.closed(approval)["resolution"] == "denied"


async def test_inbox_answer_approves_an_approval_and_answers_a_question() -> None:
    d = Desk()
    th = d.thread()
    approval, afut = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    question, qfut = d.inbox.open(th, InboxKind.QUESTION, question="?")
    escalation, efut = d.inbox.open(th, InboxKind.ESCALATION, reason="stuck")
    d.inbox.answer(approval, "go, but be careful")
    d.inbox.answer(question, "blue")
    d.inbox.answer(escalation, "try the other file")
    a, q, e = await settled(afut), await settled(qfut), await settled(efut)
    assert (a.resolution, a.text) == (Resolution.APPROVED, "go, but be careful")
    assert (q.resolution, q.text) == (Resolution.ANSWERED, "blue")
    assert (e.resolution, e.text) == (Resolution.ANSWERED, "try the other file")


async def test_inbox_decide_records_wait_attention_and_batch() -> None:
    d = Desk()
    th = d.thread()
    item, fut = d.inbox.open(th, InboxKind.APPROVAL, tool="write_file", args={"path": "a"})
    other, ofut = d.inbox.open(th, InboxKind.APPROVAL, tool="write_file", args={"path": "b"})
    d.now = 107.25
    d.inbox.approve(item, args={"path": "c"}, comment="ok", attention_s=2.34567, batch=item)
    decision = await settled(fut)
    assert decision == Decision(Resolution.APPROVED, "human", "ok", {"path": "c"}, 2.34567, item)
    closed = d.closed(item)
    assert closed["waited_s"] == 7.25
    assert closed["attention_s"] == 2.346
    assert closed["batch"] == item
    assert closed["args"] == {"path": "c"}
    assert closed["by"] == "human"
    d.inbox.deny(other, attention_s=-3.0, batch=item)  # a clock step back: never negative
    await settled(ofut)
    assert d.closed(other)["attention_s"] == 0.0
    assert th.items == {}
    assert d.bus.state.inbox == {}
    assert d.bus.state.threads["t"].pending == 0
    assert d.bus.state.decisions == 1  # one key decided both: one decision
    assert d.inbox.knows(item) and not d.inbox.is_open(item)


async def test_inbox_owner_of_an_unknown_or_closed_item_is_a_command_error() -> None:
    d = Desk()
    th = d.thread()
    with pytest.raises(CommandError, match="no open inbox item 'i9'"):
        d.inbox.owner("i9")
    item, _ = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    owner, kind, _fut = d.inbox.owner(item)
    assert (owner, kind) == (th, InboxKind.APPROVAL)
    d.inbox.approve(item)
    for act in (d.inbox.approve, d.inbox.deny, lambda i: d.inbox.answer(i, "x")):
        with pytest.raises(CommandError, match=f"no open inbox item {item!r}"):
            act(item)
    assert len(of_kind(d.events, EventKind.INBOX_CLOSED)) == 1


async def test_inbox_waiting_lists_open_items_of_one_kind() -> None:
    d = Desk()
    t1, t2 = d.thread("t1"), d.thread("t2")
    a1, _ = d.inbox.open(t1, InboxKind.APPROVAL, tool="shell")
    d.inbox.open(t1, InboxKind.QUESTION, question="?")
    a2, _ = d.inbox.open(t2, InboxKind.APPROVAL, tool="shell")
    seen = []
    for th, item in d.inbox.waiting(InboxKind.APPROVAL):
        seen.append((th.id, item))
        d.inbox.approve(item)  # deciding while walking the snapshot is safe
    assert seen == [("t1", a1), ("t2", a2)]
    assert list(d.inbox.waiting(InboxKind.APPROVAL)) == []
    assert [item for _th, item in d.inbox.waiting(InboxKind.QUESTION)] == ["i2"]


async def test_inbox_drop_cancels_waiters_and_records_dropped() -> None:
    d = Desk()
    th = d.thread()
    other = d.thread("other")
    i1, f1 = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    i2, f2 = d.inbox.open(th, InboxKind.QUESTION, question="?")
    i3, f3 = d.inbox.open(other, InboxKind.QUESTION, question="?")
    d.inbox.drop(th)
    assert f1.cancelled() and f2.cancelled()
    assert not f3.done()
    assert th.items == {}
    for item in (i1, i2):
        assert d.closed(item)["resolution"] == "dropped"
        assert d.closed(item)["by"] == "tower"
    assert list(d.bus.state.inbox) == [i3]
    assert d.bus.state.decisions == 0  # tower's drop is not the person's decision


async def test_inbox_drop_recorded_closes_a_resumed_threads_old_items() -> None:
    d = Desk()
    d.thread("t")
    d.thread("u")
    # Items from before a crash: in the log (and so the state), with nobody waiting.
    d.bus.emit(pl.InboxOpened.of(item="i4", kind="approval", tool="shell"), "t")
    d.bus.emit(pl.InboxOpened.of(item="i5", kind="question", question="?"), "u")
    d.inbox.drop_recorded("t")
    assert d.closed("i4")["resolution"] == "dropped"
    assert list(d.bus.state.inbox) == ["i5"]


async def test_inbox_continue_numbering_follows_the_logs_highest_item() -> None:
    d = Desk()
    th = d.thread()
    log = [
        Event(1, 0.0, EventKind.INBOX_OPENED, "t", {"item": "i7", "kind": "approval"}),
        Event(2, 0.0, EventKind.INBOX_OPENED, "t", {"item": "i3", "kind": "approval"}),
        Event(3, 0.0, EventKind.INBOX_OPENED, "t", {"item": "ix", "kind": "approval"}),
        Event(4, 0.0, EventKind.INBOX_CLOSED, "t", {"item": "i99", "resolution": "dropped"}),
    ]
    d.inbox.continue_numbering(digest(log, {}).last_item)
    item, _ = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    assert item == "i8"


async def test_auto_decider_all_approves_answers_and_refuses_budget_and_escalation() -> None:
    d = Desk()
    script = [
        {"tool": "ask_human", "args": {"question": "Other?"}, "answer": "no"},
        {"tool": "ask_human", "args": {"question": "Which?"}, "answer": "B"},
    ]
    th = d.thread(script=script)
    AutoDecider(d.inbox, d.bus, "all")
    _, approval = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    _, question = d.inbox.open(th, InboxKind.QUESTION, question="Which?")
    _, budget = d.inbox.open(th, InboxKind.BUDGET, scope="thread")
    _, escalation = d.inbox.open(th, InboxKind.ESCALATION, reason="loop: shell")
    a, q, b, e = [await settled(f) for f in (approval, question, budget, escalation)]
    rule = "rule:--approve all"
    assert (a.resolution, a.by) == (Resolution.APPROVED, rule)
    assert (q.resolution, q.text, q.by) == (Resolution.ANSWERED, "B", rule)
    assert (b.resolution, b.by) == (Resolution.DECLINED, rule)
    assert b.text == "headless runs never raise a budget"
    assert (e.resolution, e.by) == (Resolution.DENIED, rule)
    assert e.text == "headless: no human to hand to (loop: shell)"


async def test_auto_decider_none_denies_approvals_and_questions() -> None:
    d = Desk()
    th = d.thread(default_answer="would be used by 'all'")
    AutoDecider(d.inbox, d.bus, "none")
    _, approval = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    _, question = d.inbox.open(th, InboxKind.QUESTION, question="Which?")
    a, q = await settled(approval), await settled(question)
    assert (a.resolution, a.by) == (Resolution.DENIED, "rule:--approve none")
    assert (q.resolution, q.text) == (Resolution.DENIED, "the human declined to answer")


async def test_auto_decider_leaves_an_item_the_person_decided_first() -> None:
    d = Desk()
    th = d.thread()
    decider = AutoDecider(d.inbox, d.bus, "all")
    item, fut = d.inbox.open(th, InboxKind.APPROVAL, tool="shell")
    d.inbox.deny(item, "mine")  # before the decider's turn comes
    decider.decide(item)  # its turn: the item is closed, so nothing happens (nor raises)
    assert (await settled(fut)).by == "human"
    assert len(of_kind(d.events, EventKind.INBOX_CLOSED)) == 1


def test_scripted_answer_prefers_the_script_then_the_default() -> None:
    script = [
        {"tool": "ask_human", "args": {"question": "Which?"}, "answer": "B"},
        {"tool": "ask_human", "args": {"question": "Unanswered?"}},
        {"tool": "shell", "args": {"question": "Which?"}, "answer": "not a question step"},
    ]
    th = make_run("t", script=script, default_answer="the default")
    assert scripted_answer(th, "Which?") == "B"
    assert scripted_answer(th, "Unanswered?") == "the default"
    assert scripted_answer(th, "Else?") == "the default"
    bare = make_run("u")
    assert scripted_answer(bare, "Which?").startswith("No answer is available")


# --- policy gate ----------------------------------------------------------------------------


class Gate:
    """A policy gate on a store-less bus; `now=None`: the real clock (timers fire)."""

    def __init__(self, rules: list[Rule] | None = None, now: float | None = 1000.0) -> None:
        self.now = now
        clock: Callable[[], float] = time.time if now is None else lambda: self.now or 0.0
        self.bus = Bus(None, clock=clock, secrets={})
        self.events: list[Event] = []
        self.bus.subscribe(self.events.append)
        self.gate = PolicyGate(self.bus, rules or [])

    def grant(
        self,
        tool: str = "write_file",
        minutes: float = 10.0,
        args: dict[str, str] | None = None,
        agent: str | None = None,
        item: str | None = None,
    ) -> Rule:
        return self.gate.grant(tool, args, agent=agent, minutes=minutes, item=item, by="human")

    def ended(self) -> list[tuple[str, str]]:
        return [(e.payload["rule"], e.payload["reason"]) for e in self.events if _is_end(e)]


def _is_end(ev: Event) -> bool:
    return ev.kind is EventKind.RULE_ENDED


async def test_gate_judge_uses_rules_deny_first_and_workspace_relative_paths() -> None:
    rules = [
        Rule(Action.DENY, tool="write_file", args=(("path", "secrets/**"),), id="p1"),
        Rule(Action.ALLOW, tool="write_file", args=(("path", "notes/*"),), id="p2"),
    ]
    g = Gate(rules)
    judge = g.gate.judge
    assert judge("coder", "/ws", "write_file", {"path": "/ws/secrets/key"}).action is Action.DENY
    allowed = judge("coder", "/ws", "write_file", {"path": "/ws/notes/a.md"})
    assert allowed.action is Action.ALLOW and allowed.rule is not None
    assert allowed.rule.id == "p2"
    assert judge("coder", "/ws", "write_file", {"path": "src/x.py"}).action is Action.ASK
    assert judge("coder", None, "read_file", {"path": "x"}).action is Action.ALLOW  # default


async def test_gate_grant_allows_what_was_asked_and_is_recorded() -> None:
    g = Gate([Rule(Action.DENY, tool="write_file", args=(("path", "secrets/**"),), id="p1")])
    assert g.gate.judge("coder", None, "write_file", {"path": "src/a.py"}).action is Action.ASK
    rule = g.grant(args={"path": "src/**"}, minutes=5, agent="coder", item="i3")
    assert rule.id == "g1"
    assert rule.expires == 1000.0 + 300
    assert rule.source == "granted by human on i3"
    verdict = g.gate.judge("coder", None, "write_file", {"path": "src/a.py"})
    assert verdict.action is Action.ALLOW and verdict.rule == rule
    # Only that agent, only those paths, and never past a deny.
    assert g.gate.judge("other", None, "write_file", {"path": "src/a.py"}).action is Action.ASK
    assert g.gate.judge("coder", None, "write_file", {"path": "docs/a"}).action is Action.ASK
    g.grant(minutes=5)  # the whole tool, for everyone
    assert g.gate.judge("x", None, "write_file", {"path": "secrets/k"}).action is Action.DENY
    granted = of_kind(g.events, EventKind.RULE_GRANTED)[0].payload
    assert granted["rule"] == rule.to_dict()
    assert (granted["minutes"], granted["by"], granted["item"]) == (5, "human", "i3")
    assert g.bus.state.grants["g1"] == rule.to_dict()
    assert g.gate.in_force()[1] == [rule, g.gate.grants["g2"]]
    g.gate.close()


async def test_gate_grant_stops_counting_once_its_time_is_up() -> None:
    g = Gate()
    rule = g.grant(tool="shell", minutes=1)
    assert g.gate.in_force()[1] == [rule]
    g.now = 1059.9
    assert g.gate.judge("a", None, "shell", {"command": "ls"}).action is Action.ALLOW
    g.now = 1060.0  # before any timer fires: the clock alone ends it
    assert g.gate.in_force()[1] == []
    assert g.gate.judge("a", None, "shell", {"command": "ls"}).action is Action.ASK
    g.gate.close()


async def test_gate_grant_expires_by_itself() -> None:
    g = Gate(now=None)  # the real clock: the expiry timer fires
    ended = asyncio.Event()
    g.bus.subscribe(lambda ev: ended.set() if _is_end(ev) else None)
    g.grant(tool="shell", minutes=0.001)  # 60 ms
    await asyncio.wait_for(ended.wait(), WAIT_S)
    assert g.ended() == [("g1", "expired")]
    assert g.gate.grants == {}
    assert g.bus.state.grants == {}
    g.gate.close()


async def test_gate_grant_needs_positive_minutes_and_revoke_a_known_grant() -> None:
    g = Gate()
    for minutes in (0, -1):
        with pytest.raises(CommandError, match="positive number of minutes"):
            g.grant(minutes=minutes)
    assert g.events == []
    with pytest.raises(CommandError, match="no time-boxed rule 'g7' in force"):
        g.gate.revoke("g7")
    rule = g.grant()
    g.gate.revoke(rule.id)
    assert g.ended() == [("g1", "revoked")]
    assert g.gate.judge("a", None, "write_file", {"path": "x"}).action is Action.ASK
    with pytest.raises(CommandError):
        g.gate.revoke(rule.id)
    g.gate.close()


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), -1.0, 0.0])
async def test_gate_grant_refuses_minutes_that_are_not_a_time_box(minutes: float) -> None:
    """NaN passed `minutes <= 0` once: recorded as non-standard JSON, never in force."""
    g = Gate()
    try:
        with pytest.raises(CommandError, match="positive number of minutes"):
            g.grant(minutes=minutes)
        assert g.events == []
    finally:
        g.gate.close()


async def test_gate_grant_ids_skip_those_the_state_already_holds() -> None:
    g = Gate()
    g.bus.emit(pl.RuleGranted(rule=Rule(Action.ALLOW, tool="shell", id="g1").to_dict()))
    assert g.grant().id == "g2"
    g.gate.close()


async def test_gate_set_rules_replaces_and_records_them() -> None:
    g = Gate([Rule(Action.ALLOW, tool="shell", id="p1")])
    assert g.gate.judge("a", None, "shell", {"command": "ls"}).action is Action.ALLOW
    deny = Rule(Action.DENY, tool="shell", id="p1")
    g.gate.set_rules([deny])
    assert g.bus.state.policy == [deny.to_dict()]
    assert g.gate.judge("a", None, "shell", {"command": "ls"}).action is Action.DENY


async def test_gate_restore_keeps_live_grants_and_ends_expired_ones() -> None:
    before = Gate()
    long = before.grant(tool="write_file", minutes=60)  # g1: until 4600
    before.grant(tool="shell", minutes=1)  # g2: until 1060
    revoked = before.grant(tool="search", minutes=60)  # g3
    before.gate.revoke(revoked.id)
    before.gate.close()

    after = Gate(now=1120.0)  # two minutes later, a new session on the same log
    after.gate.restore(before.events)
    assert after.gate.grants == {"g1": long}
    assert after.ended() == [("g2", "expired")]  # g3 was already ended in the log
    verdict = after.gate.judge("a", None, "write_file", {"path": "x"})
    assert verdict.action is Action.ALLOW and verdict.rule == long
    assert after.grant().id == "g4"  # never reuses an id of the log
    after.gate.close()


async def test_gate_close_prevents_any_later_expiry_record() -> None:
    g = Gate()  # a fake clock: the expiry timer is exactly 30 ms away
    g.grant(tool="shell", minutes=0.0005)
    g.gate.close()
    # A timer due later than the expiry's: when it fires, the expiry's time has passed.
    loop = asyncio.get_running_loop()
    later: asyncio.Future[None] = loop.create_future()
    loop.call_later(0.1, later.set_result, None)
    await asyncio.wait_for(later, WAIT_S)
    assert g.ended() == []


# --- tasks and the resumer ------------------------------------------------------------------

PROJECT = """
[project]
name = "parts"

[budget]
thread_usd = 0.25

[[agents]]
name = "coder"
cascade = ["sim/small", "sim/large"]

[[tasks]]
id = "review"
agent = "coder"
prompt = "Review the code"
answer = "looks fine"

[[tasks]]
id = "review-2"
agent = "coder"
prompt = "Review it again"

[[tasks]]
id = "screen"
agent = "coder"
prompt = "Screen item {n}"
title = "Screen {n}"
repeat = 3
workspace = "ws"
answer = "ok {n}"
budget_usd = 0.5
script = [{ tool = "ask_human", args = { question = "Is {n} fine?" }, answer = "yes {n}" }]
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    (tmp_path / "ws").mkdir()
    return parse_project(PROJECT, tmp_path)


def test_task_of_maps_references_back_to_tasks(project: Project) -> None:
    review, again, screen = project.tasks

    def of(ref: str) -> tuple[str, int | None] | None:
        found = task_of(project, ref)
        return (found[0].id, found[1]) if found else None

    assert of("review") == ("review", None)
    assert of("review-2") == ("review-2", None)  # the exact id wins over the suffix
    assert of("review-3") == ("review", None)  # a spawned copy of a task not repeated
    assert of("screen-4") == ("screen", 4)  # any number of a repeated task
    assert of("screen") == ("screen", None)
    assert of("screen-x") is None
    assert of("nope-1") is None
    assert of("-1") is None
    assert task_of(project, "screen-2") == (screen, 2)
    assert (review.id, again.id) == ("review", "review-2")


def test_task_copy_fills_n_and_falls_back_to_the_project_budget(project: Project) -> None:
    review, _again, screen = project.tasks
    copy = task_copy(project, screen, 2)
    assert copy.thread_id == "screen-2" and copy.ref == "screen-2"
    assert (copy.prompt, copy.title, copy.answer) == ("Screen item 2", "Screen 2", "ok 2")
    assert copy.budget_usd == 0.5
    assert copy.script is not None
    assert copy.script[0]["args"] == {"question": "Is 2 fine?"}
    assert copy.script[0]["answer"] == "yes 2"
    plain = task_copy(project, review, None, tid="review-7")
    assert plain.thread_id == "review-7" and plain.ref == "review"
    assert plain.title is None  # no title: the thread shows its prompt
    assert plain.budget_usd == 0.25  # the project's per-thread budget
    assert plain.script is None
    assert script_of(review, None) is None


def test_planned_copies_expand_repeat(project: Project) -> None:
    copies = list(planned_copies(project))
    assert [c.thread_id for c in copies] == [
        "review",
        "review-2",
        "screen-1",
        "screen-2",
        "screen-3",
    ]
    assert [c.n for c in copies] == [None, None, 1, 2, 3]
    assert copies[4].prompt == "Screen item 3"
    for c in copies:  # the way back finds every copy's task
        found = task_of(project, c.ref)
        assert found is not None and found[0] is c.task


def plan_and_view(**view_kw: Any) -> tuple[ThreadPlan, ThreadView]:
    plan = ThreadPlan(
        id="screen-2", spawned={"prompt": "Screen item 2"}, steps=3, model="sim/large"
    )
    fields: dict[str, Any] = {
        "id": "screen-2",
        "agent": "coder",
        "task": "screen-2",
        "title": "Screen 2",
        "cascade": ["sim/small", "sim/large"],
        "model": "sim/large",
        "priority": 4,
        "created": 0.0,
        "budget_usd": 0.5,
        "reserved_usd": 0.01,
    }
    fields.update(view_kw)
    return plan, ThreadView(**fields)


def test_restart_continues_a_plan_under_todays_project(project: Project, tmp_path: Path) -> None:
    plan, view = plan_and_view()
    again = restart(plan, view, project, order=7)
    run = again.run
    assert again.forked_from is None
    assert again.lost_usd == 0.01  # the call in flight at the crash, at its reservation
    assert run.model == "sim/large" and run.model_index == 1
    assert (run.priority, run.order, run.steps) == (4, 7, 3)
    assert run.prompt == "Screen item 2"
    assert run.agent is project.agent("coder")
    assert run.workspace_src == tmp_path / "ws"
    assert run.default_answer == "ok 2"
    assert run.script is not None and run.script[0]["answer"] == "yes 2"
    assert run.budget_usd == 0.5


def test_restart_fork_onto_a_new_model_goes_before_the_plans_model(project: Project) -> None:
    plan, view = plan_and_view()
    again = restart(plan, view, project, order=0, model="sim/instant")
    assert again.forked_from == "sim/large"
    assert again.run.cascade == ["sim/small", "sim/instant", "sim/large"]
    assert again.run.model == "sim/instant"
    assert view.cascade == ["sim/small", "sim/large"]  # the recorded view is not changed

    plan, view = plan_and_view()
    back = restart(plan, view, project, order=0, model="sim/small")  # already in the cascade
    assert back.forked_from == "sim/large"
    assert back.run.cascade == ["sim/small", "sim/large"]
    assert back.run.model == "sim/small"

    plan, view = plan_and_view()
    same = restart(plan, view, project, order=0, model="sim/large")
    assert same.forked_from is None


def test_restart_of_a_thread_whose_agent_or_task_is_gone(project: Project) -> None:
    plan, view = plan_and_view(agent="ghost")
    with pytest.raises(CommandError, match="agent 'ghost' is no longer in the project"):
        restart(plan, view, project, order=0)
    plan, view = plan_and_view(task="removed-1")
    plan.spawned = {}
    run = restart(plan, view, project, order=0).run
    assert (run.script, run.workspace_src, run.default_answer) == (None, None, None)
    assert run.prompt == "Screen 2"  # no recorded prompt: its title


def test_restore_session_and_thread_set_caps_and_spending() -> None:
    ledger = Ledger()
    restore_session(ledger, BudgetView(limit_usd=2.0, spent_usd=0.5, lost_usd=0.25, tokens=1000))
    s = ledger.session
    assert (s.limit_usd, s.limit_tokens) == (2.0, INF)
    assert s.spent_usd == pytest.approx(0.75)  # a lost call counts as spent
    assert s.spent_tokens == 1000

    run = make_run("t")
    run.budget_tokens = 500
    # The reducer keeps a subtree's totals (own cost, lost calls, descendants'): the account
    # of a thread holds its subtree's spending.
    _plan, view = plan_and_view(
        id="t", cost_usd=0.1, lost_usd=0.05, tokens=300, subtree_usd=0.15, subtree_tokens=300
    )
    restore_thread(ledger, run, view)
    acct = ledger.threads["t"]
    assert (acct.limit_usd, acct.limit_tokens) == (INF, 500)
    assert acct.spent_usd == pytest.approx(0.15)
    assert acct.spent_tokens == 300
    refused = ledger.reserve("t", 0.0, 250)  # 300 spent + 250 > 500
    assert isinstance(refused, Refusal) and refused.resource == "tokens"

    # A sub-agent goes back under its parent: its calls count against the parent's cap.
    child = make_run("t.1")
    child.parent = "t"
    _plan, cview = plan_and_view(id="t.1", parent="t", subtree_usd=0.02, subtree_tokens=40)
    restore_thread(ledger, child, cview)
    assert ledger.parents["t.1"] == "t"
    refused = ledger.reserve("t.1", 0.0, 201)  # the parent's 300 + 201 > 500
    assert isinstance(refused, Refusal) and (refused.scope, refused.account) == ("subtree", "t")
    ledger.book("t.1", 0.01)  # a call this crash cut off: booked up the chain
    assert ledger.threads["t"].spent_usd == pytest.approx(0.16)
    assert ledger.threads["t.1"].spent_usd == pytest.approx(0.03)


def test_highest_number_reads_only_the_kind_and_key_asked() -> None:
    def started(seq: int, call: str) -> Event:
        return Event(seq, 0.0, EventKind.LLM_STARTED, "t", {"call": call})

    log = [
        started(1, "c3"),
        started(2, "c12"),
        started(3, "cx"),
        Event(4, 0.0, EventKind.LLM_FINISHED, "t", {"call": "c99"}),
        Event(5, 0.0, EventKind.LLM_STARTED, "t", {}),
    ]
    assert highest_number(log, EventKind.LLM_STARTED, "call") == 12
    assert highest_number([], EventKind.LLM_STARTED, "call") == 0


# --- the agent loop behind a fake host ------------------------------------------------------


class FakeHost:
    """A LoopHost of a few lines: it records what the loop asks of it."""

    pool = None  # no worker processes: calls in-process
    responses = None  # no response cache
    compaction = CompactionSettings(at=0)  # threads are never folded

    def lane_of(self, th: ThreadRun) -> str | None:
        return None  # every call the ordinary way

    def batch_price(self, model: str) -> llm.Price | None:
        return None

    async def batch_call(self, th: ThreadRun, *args: Any) -> llm.CallResult:
        raise AssertionError("no thread of the fake host is on a batch lane")

    def context_window(self, model: str) -> int | None:
        return None  # compaction is off anyway

    def compaction_metadata(self, th: ThreadRun, model: str) -> dict[str, Any] | None:
        return None

    def __init__(
        self,
        *,
        admit: bool = True,
        reserve: Reservation | Refusal | None = None,
        decision: Decision | None = None,
        verdict: Verdict | None = None,
    ) -> None:
        self.calls: list[str] = []
        self.emitted: list[pl.Payload] = []
        self.finished: list[tuple[ThreadState, str, str | None]] = []
        self.asked: list[tuple[InboxKind, dict[str, Any]]] = []
        self._admit = admit
        self._reserve = reserve or Reservation(1, "t", 0.0, 0)
        self._decision = decision or Decision(Resolution.DENIED)
        self._verdict = verdict or Verdict(Action.ALLOW, why="test host")
        self._settings = ProjectMeta(name="fake")
        self._lag = LoopLag()

    @property
    def settings(self) -> ProjectMeta:
        return self._settings

    @property
    def lag(self) -> LoopLag:
        return self._lag

    def emit(self, payload: pl.Payload, thread: str | None = None, /) -> object:
        self.emitted.append(payload)
        return None

    async def barrier(self) -> None:
        self.calls.append("barrier")

    async def checkpoint(self, th: ThreadRun) -> bool:
        self.calls.append("checkpoint")
        return not th.ended

    def set_state(self, th: ThreadRun, state: ThreadState, reason: str = "") -> None:
        self.calls.append(f"set_state:{state}")

    def finish(
        self, th: ThreadRun, state: ThreadState, reason: str = "", answer: str | None = None
    ) -> None:
        self.calls.append("finish")
        self.finished.append((state, reason, answer))
        th.state = state

    def auto_escalate(self, th: ThreadRun, trigger: str) -> None:
        self.calls.append(f"auto_escalate:{trigger}")

    async def ask(
        self, th: ThreadRun, kind: InboxKind, wait_state: ThreadState, why: str, **data: Any
    ) -> Decision:
        self.calls.append("ask")
        self.asked.append((kind, data))
        return self._decision

    async def admit(self, th: ThreadRun) -> bool:
        self.calls.append("admit")
        return self._admit

    def release_slot(self, ended: bool) -> None:
        self.calls.append(f"release_slot:{ended}")

    async def rate_gate(self, th: ThreadRun, model: str, tokens: int) -> Use | None:
        self.calls.append(f"rate_gate:{model}:{tokens}")
        return None

    def prompt_bound(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        tools_chars: int,
    ) -> int:
        self.calls.append("prompt_bound")
        return 100

    def price(self, model: str) -> llm.Price | None:
        return None

    def reserve(self, th: ThreadRun, usd: float, tokens: int) -> Reservation | Refusal:
        self.calls.append("reserve")
        return self._reserve

    def release(self, res: Reservation) -> float:
        self.calls.append("release")
        return 0.0

    def settle(self, res: Reservation, usd: float, tokens: int) -> None:
        self.calls.append("settle")

    def next_call_id(self) -> str:
        return "c1"

    def endpoint(self, model: str) -> dict[str, Any]:
        return {}

    def tokenizer(self, model: str) -> Any:
        return None

    def sim_metadata(self, th: ThreadRun, attempt: int) -> dict[str, Any] | None:
        return None

    def tools_for(self, agent: AgentSettings) -> list[dict[str, Any]]:
        return []

    def has_tool(self, agent: AgentSettings, name: str) -> bool:
        return name in agent.tools

    def mcp_tool_names(self, agent: AgentSettings) -> list[str]:
        return []

    def judge(self, th: ThreadRun, tool: str, args: dict[str, Any]) -> Verdict:
        self.calls.append(f"judge:{tool}")
        return self._verdict

    async def run_tool(
        self, th: ThreadRun, name: str, args: dict[str, Any], call_id: str = ""
    ) -> str:
        self.calls.append(f"run_tool:{name}")
        return "ran"

    def check_of(self, th: ThreadRun) -> CheckSettings | None:
        return None

    def results(self) -> list[pl.ToolResult]:
        return [p for p in self.emitted if isinstance(p, pl.ToolResult)]


def loop_run(max_steps: int = 2, steps: int = 0) -> ThreadRun:
    th = make_run("t", agent=AgentSettings(name="coder", max_steps=max_steps, system_prompt="S"))
    th.steps = steps
    return th


def test_fake_host_implements_every_loop_host_member() -> None:
    members = {name for name in vars(LoopHost) if not name.startswith("_")}
    assert {"admit", "finish", "ask", "judge", "run_tool", "settings"} <= members
    assert members <= set(dir(FakeHost))


async def test_loop_at_max_steps_fails_without_calling_the_model() -> None:
    host = FakeHost()
    th = loop_run(max_steps=2, steps=2)
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    assert host.finished == [
        (ThreadState.FAILED, "max_steps: 2 model calls without finishing", None)
    ]
    assert "prompt_bound" not in host.calls and "admit" not in host.calls
    assert th.messages == messages.opening("S", "prompt of t")  # the loop opened it


async def test_loop_ends_quietly_when_the_host_does_not_admit_the_call() -> None:
    host = FakeHost(admit=False)
    th = loop_run()
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    max_tokens = th.agent.max_tokens
    assert host.calls == [
        "checkpoint",
        "prompt_bound",
        f"rate_gate:m:{100 + max_tokens}",
        "checkpoint",
        "admit",
    ]
    assert host.finished == [] and host.emitted == []


async def test_loop_gives_its_slot_back_before_asking_for_budget() -> None:
    refusal = Refusal("thread", "usd", needed=0.01, available=0.0)
    host = FakeHost(reserve=refusal, decision=Decision(Resolution.DECLINED))
    th = loop_run()
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    tail = host.calls[host.calls.index("admit") :]
    assert tail == ["admit", "reserve", "release_slot:False", "ask", "finish"]
    kind, data = host.asked[0]
    assert kind is InboxKind.BUDGET
    assert (data["scope"], data["resource"]) == ("thread", "usd")
    assert host.finished == [(ThreadState.FAILED, "budget", None)]


async def test_loop_finishes_a_resumed_finish_call_without_a_model_call() -> None:
    host = FakeHost()
    th = loop_run()
    th.pending = [llm.ToolCall("call_1", "finish", '{"answer": " 42 "}')]
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    assert th.pending == []
    assert host.finished == [(ThreadState.DONE, "finished", "42")]
    assert "prompt_bound" not in host.calls
    called = [p for p in host.emitted if isinstance(p, pl.ToolCalled)]
    assert [(c.call_id, c.tool, c.policy) for c in called] == [("call_1", "finish", "allow")]
    assert [(r.call_id, r.ok, r.result) for r in host.results()] == [("call_1", True, "finished")]


async def test_loop_answers_a_resumed_question_from_the_hosts_decision() -> None:
    host = FakeHost(decision=Decision(Resolution.ANSWERED, text="B"))
    th = loop_run(max_steps=1, steps=1)
    th.pending = [llm.ToolCall("q1", "ask_human", '{"question": "Which?"}')]
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    kind, data = host.asked[0]
    assert kind is InboxKind.QUESTION
    assert (data["question"], data["call_id"]) == ("Which?", "q1")
    assert [(r.ok, r.result) for r in host.results()] == [(True, "B")]
    assert host.finished[0][0] is ThreadState.FAILED  # then out of steps


async def test_loop_never_runs_a_call_the_host_denies() -> None:
    host = FakeHost(
        verdict=Verdict(Action.ASK, why="ask"),
        decision=Decision(Resolution.DENIED, text="not now"),
    )
    th = loop_run(max_steps=1, steps=1)
    th.pending = [llm.ToolCall("w1", "write_file", '{"path": "a.txt", "content": "x"}')]
    await asyncio.wait_for(AgentLoop(host, th).run(), WAIT_S)
    assert host.asked[0][0] is InboxKind.APPROVAL
    assert host.asked[0][1]["tool"] == "write_file"
    assert not any(c.startswith("run_tool") for c in host.calls)
    assert [(r.ok, r.result) for r in host.results()] == [(False, "denied by the human: not now")]
