"""The reducer (tower/core/state.py): hand-built event sequences with the payloads that
tower/core/agent.py and tower/core/supervisor.py emit, folded into TowerState."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tower.core import payloads as pl
from tower.core.events import Event, InboxKind, Resolution, ThreadState
from tower.core.state import TowerState, apply, fold, summary

TOL = 1e-9


class Log:
    """Builds events the way the bus numbers them: seq 1, 2, 3... with a given clock."""

    def __init__(self, t0: float = 1000.0) -> None:
        self.events: list[Event] = []
        self.now = t0

    def emit(self, payload: pl.Payload, thread: str | None = None, /) -> Event:
        ev = Event(len(self.events) + 1, self.now, payload.KIND, thread, payload.to_dict())
        self.events.append(ev)
        return ev

    # --- the payloads supervisor.py / agent.py emit ------------------------------------

    def session_started(
        self,
        session: str = "s1",
        budget_usd: float | None = 1.0,
        budget_tokens: int | None = None,
        tasks_planned: int = 0,
    ) -> Event:
        return self.emit(
            pl.SessionStarted(
                session=session,
                project="demo",
                project_dir="/tmp/demo",
                budget_usd=budget_usd,
                budget_tokens=budget_tokens,
                max_concurrent=16,
                seed=0,
                approve=None,
                tasks_planned=tasks_planned,
            )
        )

    def spawned(
        self,
        tid: str,
        cascade: tuple[str, ...] = ("sim/small", "sim/large"),
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        priority: int = 0,
        planned: bool = False,
    ) -> Event:
        return self.emit(
            pl.ThreadSpawned(
                agent="worker",
                task=f"task-{tid}",
                title=f"title of {tid}",
                prompt=f"do {tid}",
                cascade=list(cascade),
                model=cascade[0],
                priority=priority,
                budget_usd=budget_usd,
                budget_tokens=budget_tokens,
                max_steps=20,
                planned=planned,
            ),
            tid,
        )

    def state(self, tid: str, state: ThreadState, reason: str = "", **extra: Any) -> Event:
        return self.emit(pl.ThreadStateChanged.of(state=str(state), reason=reason, **extra), tid)

    def llm_started(
        self, tid: str, call: str, step: int, usd: float, tokens: int, model: str = "sim/small"
    ) -> Event:
        return self.emit(
            pl.LlmStarted(
                call=call,
                step=step,
                model=model,
                attempt=0,
                prompt_tokens_est=tokens - 100,
                max_tokens=100,
                reserved_usd=usd,
                reserved_tokens=tokens,
            ),
            tid,
        )

    def llm_finished(
        self,
        tid: str,
        call: str,
        step: int,
        reserved_usd: float,
        cost: float,
        prompt_tokens: int,
        completion_tokens: int,
        model: str = "sim/small",
    ) -> Event:
        return self.emit(
            pl.LlmFinished(
                call=call,
                step=step,
                model=model,
                text="thinking",
                tool_calls=[],
                usage=pl.Usage(
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                ),
                cost_usd=cost,
                price_known=True,
                reserved_usd=reserved_usd,
                seconds=0.01,
                finish_reason="stop",
            ),
            tid,
        )

    def llm_failed(
        self, tid: str, call: str, step: int, released: float, error: str = "rate limited"
    ) -> Event:
        return self.emit(
            pl.LlmFailed(
                call=call,
                step=step,
                model="sim/small",
                error=error,
                retryable=error != "cancelled",
                attempt=0,
                released_usd=released,
            ),
            tid,
        )

    def inbox_opened(self, tid: str, item: str, kind: InboxKind = InboxKind.APPROVAL) -> Event:
        return self.emit(
            pl.InboxOpened.of(
                item=item,
                kind=str(kind),
                cost_so_far=0.0,
                tool="write_file",
                args={"path": "out.txt", "content": "x"},
                reason="writing the result",
                call_id=f"call-{item}",
            ),
            tid,
        )

    def inbox_closed(
        self,
        tid: str,
        item: str,
        resolution: Resolution,
        by: str = "human",
        attention_s: float | None = None,
    ) -> Event:
        extra = {} if attention_s is None else {"attention_s": attention_s}
        return self.emit(
            pl.InboxClosed.of(item=item, resolution=str(resolution), by=by, **extra), tid
        )


def test_spawn_running_done_with_answer() -> None:
    log = Log(t0=50.0)
    log.session_started(session="sess-7")
    log.now = 51.0
    log.spawned("t1", priority=3, budget_usd=0.25, budget_tokens=9000)
    log.now = 52.5
    log.state("t1", ThreadState.RUNNING)
    log.now = 60.0
    log.state("t1", ThreadState.DONE, "finished", answer="42 apples")
    st_ = fold(log.events)

    assert st_.session == "sess-7"
    assert st_.project == "demo"
    assert st_.started == 50.0
    v = st_.threads["t1"]
    assert (v.agent, v.task, v.title) == ("worker", "task-t1", "title of t1")
    assert v.cascade == ["sim/small", "sim/large"]
    assert v.model == "sim/small"
    assert v.priority == 3
    assert v.budget_usd == 0.25
    assert v.budget_tokens == 9000
    assert v.created == 51.0
    assert v.started == 52.5
    assert v.ended == 60.0
    assert v.state is ThreadState.DONE
    assert v.reason == "finished"
    assert v.answer == "42 apples"
    assert st_.all_ended
    assert st_.events == len(log.events)
    assert st_.last_seq == log.events[-1].seq
    assert st_.last_ts == 60.0


def test_spawned_thread_is_queued_and_not_ended() -> None:
    log = Log()
    log.spawned("t1")
    st_ = fold(log.events)
    assert st_.threads["t1"].state is ThreadState.QUEUED
    assert st_.threads["t1"].started is None
    assert not st_.all_ended


def test_started_is_the_first_running_not_a_later_resume() -> None:
    log = Log(t0=10.0)
    log.spawned("t1")
    log.now = 11.0
    log.state("t1", ThreadState.RUNNING)
    log.now = 12.0
    log.state("t1", ThreadState.PAUSED, "paused by the human")
    log.now = 13.0
    log.state("t1", ThreadState.RUNNING)
    v = fold(log.events).threads["t1"]
    assert v.started == 11.0
    assert v.state is ThreadState.RUNNING
    assert v.reason == ""
    assert v.ended is None


def test_llm_started_reserves_and_finished_settles() -> None:
    log = Log()
    log.session_started(budget_usd=2.0)
    log.spawned("t1")
    log.state("t1", ThreadState.RUNNING)
    log.llm_started("t1", "c1", 1, usd=0.03, tokens=700, model="sim/large")

    st_ = fold(log.events)
    v = st_.threads["t1"]
    assert v.reserved_usd == pytest.approx(0.03)
    assert st_.budget.reserved_usd == pytest.approx(0.03)
    assert v.step == 1
    assert v.model == "sim/large"
    assert st_.budget.spent_usd == 0.0

    log.llm_finished(
        "t1", "c1", 1, reserved_usd=0.03, cost=0.011, prompt_tokens=400, completion_tokens=80
    )
    apply(st_, log.events[-1])
    assert v.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert st_.budget.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert v.cost_usd == pytest.approx(0.011)
    assert st_.budget.spent_usd == pytest.approx(0.011)
    assert v.tokens == 480
    assert st_.budget.tokens == 480

    # A second call adds on top of the first.
    log.llm_started("t1", "c2", 2, usd=0.05, tokens=900)
    apply(st_, log.events[-1])
    assert st_.budget.reserved_usd == pytest.approx(0.05)
    log.llm_finished(
        "t1", "c2", 2, reserved_usd=0.05, cost=0.02, prompt_tokens=500, completion_tokens=20
    )
    apply(st_, log.events[-1])
    assert v.cost_usd == pytest.approx(0.031)
    assert st_.budget.spent_usd == pytest.approx(0.031)
    assert v.tokens == 480 + 520
    assert st_.budget.tokens == 480 + 520
    assert v.step == 2
    assert st_.budget.reserved_usd == pytest.approx(0.0, abs=TOL)


def test_two_threads_reserve_independently_and_session_sums_them() -> None:
    log = Log()
    log.session_started()
    log.spawned("a")
    log.spawned("b")
    log.llm_started("a", "c1", 1, usd=0.1, tokens=100)
    log.llm_started("b", "c2", 1, usd=0.4, tokens=100)
    st_ = fold(log.events)
    assert st_.threads["a"].reserved_usd == pytest.approx(0.1)
    assert st_.threads["b"].reserved_usd == pytest.approx(0.4)
    assert st_.budget.reserved_usd == pytest.approx(0.5)
    log.llm_finished(
        "b", "c2", 1, reserved_usd=0.4, cost=0.3, prompt_tokens=60, completion_tokens=40
    )
    apply(st_, log.events[-1])
    assert st_.threads["a"].reserved_usd == pytest.approx(0.1)
    assert st_.threads["b"].reserved_usd == pytest.approx(0.0, abs=TOL)
    assert st_.budget.reserved_usd == pytest.approx(0.1)
    assert st_.threads["a"].cost_usd == 0.0
    assert st_.threads["b"].cost_usd == pytest.approx(0.3)


def test_llm_failed_releases_and_counts_an_error() -> None:
    log = Log()
    log.session_started()
    log.spawned("t1")
    log.llm_started("t1", "c1", 1, usd=0.2, tokens=1000)
    log.llm_failed("t1", "c1", 1, released=0.2, error="rate limited")
    st_ = fold(log.events)
    v = st_.threads["t1"]
    assert v.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert st_.budget.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert st_.budget.spent_usd == 0.0
    assert v.cost_usd == 0.0
    assert v.errors == 1
    assert "rate limited" in v.tail


def test_cancelled_release_is_not_an_error() -> None:
    log = Log()
    log.spawned("t1")
    log.llm_started("t1", "c1", 1, usd=0.2, tokens=1000)
    log.llm_failed("t1", "c1", 1, released=0.2, error="cancelled")
    log.state("t1", ThreadState.KILLED, "killed by the human")
    st_ = fold(log.events)
    v = st_.threads["t1"]
    assert v.errors == 0
    assert v.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert st_.budget.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert v.state is ThreadState.KILLED


def test_release_of_zero_after_idempotent_ledger_release_changes_nothing() -> None:
    # The ledger returns 0.0 when a reservation was already released; the log says so.
    log = Log()
    log.spawned("t1")
    log.llm_started("t1", "c1", 1, usd=0.2, tokens=1000)
    log.llm_started("t1", "c2", 2, usd=0.3, tokens=1000)  # still in flight throughout
    assert fold(log.events).threads["t1"].reserved_usd == pytest.approx(0.5)
    log.llm_failed("t1", "c1", 1, released=0.2, error="boom")
    log.llm_failed("t1", "c1", 1, released=0.0, error="cancelled")
    st_ = fold(log.events)
    v = st_.threads["t1"]
    # Exactly c2's reservation is left: c1's was released once, not twice.
    assert st_.budget.reserved_usd == pytest.approx(0.3, abs=TOL)
    assert v.reserved_usd == pytest.approx(0.3, abs=TOL)
    assert st_.budget.spent_usd == 0.0
    assert v.cost_usd == 0.0
    assert v.errors == 1  # the failure; the late "cancelled" release is not a second error


def test_inbox_is_oldest_first_and_pending_counts() -> None:
    log = Log(t0=100.0)
    log.spawned("a")
    log.spawned("b")
    log.now = 101.0
    log.inbox_opened("a", "i1")
    log.now = 102.0
    log.inbox_opened("b", "i2", InboxKind.QUESTION)
    log.now = 103.0
    log.inbox_opened("a", "i3", InboxKind.BUDGET)
    st_ = fold(log.events)
    assert list(st_.inbox) == ["i1", "i2", "i3"]
    assert [i.created for i in st_.inbox.values()] == [101.0, 102.0, 103.0]
    assert [i.thread for i in st_.inbox.values()] == ["a", "b", "a"]
    assert [i.kind for i in st_.inbox.values()] == [
        InboxKind.APPROVAL,
        InboxKind.QUESTION,
        InboxKind.BUDGET,
    ]
    assert st_.inbox["i1"].data["tool"] == "write_file"
    assert st_.threads["a"].pending == 2
    assert st_.threads["b"].pending == 1

    # Closing the middle item keeps the others in their order.
    log.now = 110.0
    log.inbox_closed("b", "i2", Resolution.ANSWERED)
    apply(st_, log.events[-1])
    assert list(st_.inbox) == ["i1", "i3"]
    assert st_.threads["b"].pending == 0

    # A later item goes to the back.
    log.inbox_opened("b", "i4")
    apply(st_, log.events[-1])
    assert list(st_.inbox) == ["i1", "i3", "i4"]


def test_closing_an_unknown_item_changes_nothing() -> None:
    log = Log()
    log.spawned("a")
    log.inbox_opened("a", "i1")
    log.inbox_closed("a", "i99", Resolution.APPROVED)
    st_ = fold(log.events)
    assert list(st_.inbox) == ["i1"]
    assert st_.threads["a"].pending == 1
    assert st_.decisions == 0
    assert st_.human_seconds == 0.0


def test_blocked_and_attention_seconds_count_only_human_decisions() -> None:
    """Blocked time is how long the item waited for the person (from the log); attention is
    the time the person spent deciding (measured by the UI, recorded on the decision)."""
    log = Log(t0=0.0)
    log.spawned("a")
    log.spawned("b")
    log.now = 10.0
    log.inbox_opened("a", "i1")  # decided by the human after 5 s
    log.now = 12.0
    log.inbox_opened("a", "i2")  # decided by a rule after 1 s
    log.now = 13.0
    log.inbox_opened("b", "i3")  # dropped by tower after 27 s
    log.now = 13.0
    log.inbox_closed("a", "i2", Resolution.APPROVED, by="rule:--approve all")
    log.now = 15.0
    log.inbox_closed("a", "i1", Resolution.DENIED, by="human", attention_s=1.5)
    log.now = 40.0
    log.inbox_closed("b", "i3", Resolution.DROPPED, by="tower")
    log.now = 41.0
    log.inbox_opened("b", "i4")
    log.now = 44.5
    log.inbox_closed("b", "i4", Resolution.ANSWERED, by="human", attention_s=2.0)
    st_ = fold(log.events)
    assert st_.blocked_seconds == pytest.approx((15.0 - 10.0) + (44.5 - 41.0))
    assert st_.human_seconds == pytest.approx(1.5 + 2.0)
    assert st_.threads["a"].human_seconds == pytest.approx(1.5)
    assert st_.threads["b"].blocked_seconds == pytest.approx(3.5)
    assert st_.decisions == 2
    assert st_.inbox == {}
    assert st_.threads["a"].pending == 0
    assert st_.threads["b"].pending == 0


def test_dropped_by_human_is_not_counted_either() -> None:
    log = Log(t0=0.0)
    log.spawned("a")
    log.inbox_opened("a", "i1")
    log.now = 30.0
    log.inbox_closed("a", "i1", Resolution.DROPPED, by="human")
    st_ = fold(log.events)
    assert st_.human_seconds == 0.0 and st_.blocked_seconds == 0.0
    assert st_.decisions == 0
    assert st_.inbox == {}


def test_escalated_moves_to_next_model() -> None:
    log = Log()
    log.spawned("t1", cascade=("sim/small", "sim/large"))
    log.emit(pl.Escalated(from_model="sim/small", to_model="sim/large", trigger="human"), "t1")
    st_ = fold(log.events)
    v = st_.threads["t1"]
    assert v.model == "sim/large"
    assert v.escalations == 1
    # The next call on the new model keeps it.
    log.llm_started("t1", "c1", 1, usd=0.1, tokens=100, model="sim/large")
    apply(st_, log.events[-1])
    assert v.model == "sim/large"


def test_budget_raised_for_session() -> None:
    log = Log()
    log.session_started(budget_usd=1.5, budget_tokens=10_000)
    log.emit(pl.BudgetRaised(scope="session", usd=0.5, tokens=2500, by="human"))
    st_ = fold(log.events)
    assert st_.budget.limit_usd == pytest.approx(2.0)
    assert st_.budget.limit_tokens == 12_500
    assert summary(st_)["budget_usd"] == pytest.approx(2.0)


def test_budget_raised_for_session_without_a_limit_starts_from_zero() -> None:
    log = Log()
    log.session_started(budget_usd=None, budget_tokens=None)
    log.emit(pl.BudgetRaised(scope="session", usd=0.25, tokens=0, by="human"))
    st_ = fold(log.events)
    assert st_.budget.limit_usd == pytest.approx(0.25)
    assert st_.budget.limit_tokens is None


def test_budget_raised_for_thread() -> None:
    log = Log()
    log.session_started(budget_usd=5.0)
    log.spawned("a", budget_usd=0.1)
    log.spawned("b", budget_usd=0.1)
    log.emit(pl.BudgetRaised(scope="thread", usd=0.4, tokens=0, by="human"), "a")
    st_ = fold(log.events)
    assert st_.threads["a"].budget_usd == pytest.approx(0.5)
    assert st_.threads["b"].budget_usd == pytest.approx(0.1)
    assert st_.budget.limit_usd == pytest.approx(5.0)


def test_budget_raised_for_thread_tokens() -> None:
    log = Log()
    log.spawned("a", budget_tokens=1000)
    log.emit(pl.BudgetRaised(scope="thread", usd=0.0, tokens=500, by="human"), "a")
    st_ = fold(log.events)
    assert st_.threads["a"].budget_tokens == 1500


def test_tool_called_and_result_track_current_tool() -> None:
    log = Log()
    log.spawned("t1")
    log.emit(pl.ToolCalled(call_id="x1", tool="read_file", args={"path": "a.txt"}, reason=""), "t1")
    st_ = fold(log.events)
    v = st_.threads["t1"]
    assert v.tool_calls == 1
    assert v.current_tool is not None
    assert v.current_tool.startswith("read_file(")
    assert "a.txt" in v.current_tool
    log.emit(pl.ToolResult(call_id="x1", tool="read_file", ok=True, result="hi"), "t1")
    apply(st_, log.events[-1])
    assert v.current_tool is None
    assert v.tool_calls == 1


def test_deltas_build_the_tail() -> None:
    log = Log()
    log.spawned("t1")
    log.emit(pl.LlmDelta(call="c1", text="Hello, "), "t1")
    log.emit(pl.LlmDelta(call="c1", text="world"), "t1")
    assert fold(log.events).threads["t1"].tail == "Hello, world"


def test_session_ended() -> None:
    log = Log(t0=5.0)
    log.session_started()
    log.now = 9.0
    log.emit(pl.SessionEnded(reason="interrupted"))
    st_ = fold(log.events)
    assert st_.ended == 9.0
    assert st_.end_reason == "interrupted"


def _mixed_session() -> Log:
    log = Log(t0=0.0)
    log.session_started(session="mix", budget_usd=3.0)
    outcomes = {
        "d1": ThreadState.DONE,
        "d2": ThreadState.DONE,
        "d3": ThreadState.DONE,
        "f1": ThreadState.FAILED,
        "k1": ThreadState.KILLED,
        "k2": ThreadState.KILLED,
        "r1": ThreadState.RUNNING,
        "w1": ThreadState.WAITING,
    }
    costs = {}
    for n, tid in enumerate(outcomes):
        log.now += 1.0
        log.spawned(tid)
        log.state(tid, ThreadState.RUNNING)
        cost = 0.0123457 * (n + 1)
        costs[tid] = cost
        log.llm_started(tid, f"c{n}", 1, usd=cost * 2, tokens=1000)
        log.llm_finished(
            tid,
            f"c{n}",
            1,
            reserved_usd=cost * 2,
            cost=cost,
            prompt_tokens=100 + n,
            completion_tokens=7,
        )
    for tid, state in outcomes.items():
        if state is not ThreadState.RUNNING:
            log.state(tid, state, "end", **({"answer": "ok"} if state is ThreadState.DONE else {}))
    return log


def test_summary_counts_and_fields() -> None:
    log = _mixed_session()
    st_ = fold(log.events)
    s = summary(st_)
    n = 8
    assert set(s) == {
        "session",
        "threads",
        "cost_usd",
        "lost_usd",
        "budget_usd",
        "tokens",
        "estimated_tokens",
        "human_minutes",
        "blocked_minutes",
        "events",
    }
    assert s["session"] == "mix"
    assert s["threads"] == {"done": 3, "failed": 1, "killed": 2}
    expected_cost = sum(0.0123457 * (k + 1) for k in range(n))
    assert s["cost_usd"] == round(expected_cost, 6)
    assert s["budget_usd"] == 3.0
    assert s["tokens"] == sum(100 + k + 7 for k in range(n))
    assert s["estimated_tokens"] == 0  # every call's usage came from its provider
    assert s["events"] == len(log.events)
    assert st_.count(ThreadState.RUNNING) == 1
    assert st_.count(ThreadState.WAITING) == 1
    assert not st_.all_ended


def test_fold_twice_gives_equal_summaries_and_does_not_touch_events() -> None:
    log = _mixed_session()
    log.inbox_opened("w1", "i1")
    before = [e.to_dict() for e in log.events]
    a = fold(log.events)
    b = fold(log.events)
    assert a is not b
    assert summary(a) == summary(b)
    assert a == b
    assert [e.to_dict() for e in log.events] == before


def test_fold_onto_a_snapshot_equals_folding_everything() -> None:
    log = _mixed_session()
    half = len(log.events) // 2
    snap = fold(log.events[:half])
    resumed = fold(log.events[half:], snap)
    assert resumed is snap
    assert summary(resumed) == summary(fold(log.events))


# --- property: reserve / settle / release never drive a reservation negative ----------


@st.composite
def _interleavings(draw: st.DrawFn) -> list[tuple[str, str, int, float, float]]:
    """A valid log: each call starts, then later settles or is released. A settled call may
    cost less than it reserved, or more (a provider that counted more than tower's estimate:
    the truth is booked either way)."""
    n_threads = draw(st.integers(1, 5))
    threads = [f"t{i}" for i in range(n_threads)]
    money = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
    open_calls: list[tuple[str, str, float]] = []
    ops: list[tuple[str, str, int, float, float]] = []
    n_calls = draw(st.integers(0, 40))
    started = 0
    while started < n_calls or open_calls:
        start = started < n_calls and (not open_calls or draw(st.booleans()))
        if start:
            tid = draw(st.sampled_from(threads))
            usd = draw(money)
            call = f"c{started}"
            started += 1
            open_calls.append((tid, call, usd))
            ops.append(("start", tid, started, usd, 0.0))
        else:
            idx = draw(st.integers(0, len(open_calls) - 1))
            tid, call, usd = open_calls.pop(idx)
            n = int(call[1:]) + 1
            if draw(st.booleans()):
                frac = draw(st.one_of(st.floats(0.0, 1.0), st.floats(1.0, 2.0)))
                ops.append(("settle", tid, n, usd, usd * frac))
            else:
                ops.append(("release", tid, n, usd, 0.0))
    return ops


@settings(max_examples=150, deadline=None)
@given(_interleavings())
def test_random_interleavings_keep_reservations_balanced(
    ops: list[tuple[str, str, int, float, float]],
) -> None:
    log = Log()
    state = TowerState()
    apply(state, log.session_started())
    threads = sorted({tid for _, tid, *_ in ops})
    for tid in threads:
        apply(state, log.spawned(tid))
    settled_total = 0.0
    settled_by_thread = dict.fromkeys(threads, 0.0)
    outstanding: dict[int, tuple[str, float]] = {}
    for op, tid, n, usd, cost in ops:
        if op == "start":
            ev = log.llm_started(tid, f"c{n}", n, usd=usd, tokens=100)
            outstanding[n] = (tid, usd)
        elif op == "settle":
            ev = log.llm_finished(
                tid, f"c{n}", n, reserved_usd=usd, cost=cost, prompt_tokens=1, completion_tokens=1
            )
            settled_total += cost
            settled_by_thread[tid] += cost
            del outstanding[n]
        else:
            ev = log.llm_failed(tid, f"c{n}", n, released=usd)
            del outstanding[n]
        apply(state, ev)

        assert state.budget.reserved_usd >= 0.0
        assert state.budget.spent_usd == pytest.approx(settled_total, abs=TOL)
        assert state.budget.reserved_usd == pytest.approx(
            sum(u for _, u in outstanding.values()), abs=TOL
        )
        for t in threads:
            v = state.threads[t]
            assert v.reserved_usd >= 0.0
            assert v.cost_usd == pytest.approx(settled_by_thread[t], abs=TOL)
            assert v.reserved_usd == pytest.approx(
                sum(u for th, u in outstanding.values() if th == t), abs=TOL
            )
    assert state.budget.reserved_usd == pytest.approx(0.0, abs=TOL)
    assert summary(state)["cost_usd"] == round(state.budget.spent_usd, 6)
