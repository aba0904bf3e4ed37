"""Backpressure: tower's own load never turns into provider timeouts.

Ten thousand calls admitted at once on one event loop made a 50 ms model take 46 s and fail
"no answer within the call timeout". Now calls wait at an AIMD gate that follows the loop's
lag, and a call's timeout counts provider time, not the time tower's loop was stalled.
The arithmetic is tested step by step; the gate and the timeout against a loop that a test
really stalls; the whole path with a project run under a stalling load.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import Live, ended
from tests.helpers import write_project
from tower.core.admission import (
    BACKOFF,
    COOLDOWN_S,
    START_LIMIT,
    Aimd,
    CallGate,
    LoopLag,
    provider_timeout,
)
from tower.core.events import EventKind, ThreadState
from tower.core.project import load_project

# --- the arithmetic -----------------------------------------------------------------------


def test_the_limit_starts_small_and_never_above_the_projects_cap() -> None:
    assert Aimd(10_000).allowed == START_LIMIT
    assert Aimd(3).allowed == 3
    assert Aimd(3).min_limit == 3


def test_lag_past_the_target_cuts_once_per_cooldown() -> None:
    a = Aimd(1000, target_lag_s=0.05)
    a.limit = 400.0
    a.sample(0.06, now=10.0)  # just past the target: the gentlest cut
    assert a.limit == pytest.approx(400 * BACKOFF)
    a.sample(1.0, now=10.0 + COOLDOWN_S / 2)  # the last cut has not shown yet: no second
    assert a.limit == pytest.approx(400 * BACKOFF) and a.cuts == 1
    a.sample(1.0, now=10.0 + COOLDOWN_S)  # far past: the deepest cut, by half
    assert a.limit == pytest.approx(400 * BACKOFF * 0.5) and a.cuts == 2


def test_cuts_stop_at_the_floor() -> None:
    a = Aimd(1000)
    for k in range(100):
        a.sample(5.0, now=k * COOLDOWN_S)
    assert a.allowed == a.min_limit


def test_the_limit_opens_by_one_per_call_only_with_room_and_demand() -> None:
    a = Aimd(1000, target_lag_s=0.05)
    start = a.limit
    a.sample(0.01, now=0.0)
    a.done(in_flight=int(start))  # in full use, loop idle: +1
    assert a.limit == start + 1
    a.done(in_flight=2)  # hardly used: the limit is not what holds anyone back
    assert a.limit == start + 1
    a.sample(0.04, now=1.0)  # under the target but not by half: hold
    a.done(in_flight=int(start))
    assert a.limit == start + 1


def test_the_limit_never_passes_max_concurrent() -> None:
    a = Aimd(40)
    for _ in range(100):
        a.done(in_flight=40)
    assert a.allowed == 40


# --- the gate -----------------------------------------------------------------------------


async def test_the_gate_admits_by_priority_then_spawn_order_then_arrival() -> None:
    gate = CallGate(1, adaptive=False)
    await gate.acquire()
    admitted: list[str] = []

    async def call(name: str, key: tuple[int, int]) -> None:
        await gate.acquire(key)
        admitted.append(name)
        gate.release()

    tasks = [
        asyncio.create_task(call(name, key))
        for name, key in [("late", (0, 9)), ("urgent", (-5, 7)), ("early", (0, 1)), ("b", (0, 9))]
    ]
    while gate.waiting < 4:
        await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*tasks)
    assert admitted == ["urgent", "early", "late", "b"]


async def test_the_gate_admits_up_to_its_limit_in_arrival_order() -> None:
    gate = CallGate(4, adaptive=False)
    order: list[int] = []
    inside = 0
    most = 0
    release = asyncio.Event()

    async def call(n: int) -> None:
        nonlocal inside, most
        await gate.acquire()
        order.append(n)
        inside += 1
        most = max(most, inside)
        await release.wait()
        inside -= 1
        gate.release()

    tasks = [asyncio.create_task(call(n)) for n in range(12)]
    while len(order) < 4:
        await asyncio.sleep(0)
    assert order == [0, 1, 2, 3] and gate.waiting == 8
    release.set()
    await asyncio.gather(*tasks)
    assert order == list(range(12)) and most == 4 and gate.in_flight == 0


async def test_a_cancelled_waiter_holds_nothing_and_an_admitted_one_hands_its_slot_on() -> None:
    gate = CallGate(1, adaptive=False)
    await gate.acquire()
    waiting = asyncio.create_task(gate.acquire())
    later = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    waiting.cancel()  # killed while queued
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gate.waiting == 1 and gate.in_flight == 1
    gate.release()  # the slot goes to the next live waiter
    await later
    assert gate.in_flight == 1
    # Admitted and cancelled in the same turn: the slot is handed on, not leaked.
    third = asyncio.create_task(gate.acquire())
    fourth = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # admits `third`...
    third.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await third
    await fourth
    assert gate.in_flight == 1 and gate.waiting == 0


# --- the timeout counts the provider's time -----------------------------------------------


def _stall_loop(seconds: float) -> asyncio.TimerHandle:
    """tower's own load, as the loop sees it: a callback that holds the loop."""
    return asyncio.get_running_loop().call_soon(time.sleep, seconds)


async def test_a_stalled_loop_does_not_time_out_a_call_the_provider_answered_in_time() -> None:
    lag = LoopLag()
    lag.start()
    try:
        # The provider answers in 0.15 s; tower stalls its own loop for 0.5 s meanwhile.
        async with provider_timeout(0.3, lag):
            provider = asyncio.create_task(asyncio.sleep(0.15))
            _stall_loop(0.5)
            await provider
        assert lag.stalled >= 0.4
    finally:
        await lag.stop()


async def test_without_the_lag_clock_the_same_stall_times_the_call_out() -> None:
    with pytest.raises(TimeoutError):
        async with provider_timeout(0.3, None):
            provider = asyncio.create_task(asyncio.sleep(0.15))
            _stall_loop(0.5)
            await provider


async def test_a_slow_provider_still_times_out_on_time() -> None:
    lag = LoopLag()
    lag.start()
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            async with provider_timeout(0.2, lag):
                await asyncio.sleep(30)
        assert loop.time() - t0 < 2.0
    finally:
        await lag.stop()


# --- the whole path, under load -----------------------------------------------------------

THREADS = 120


def _project(adaptive: bool) -> str:
    return f"""
[project]
name = "load"
seed = 3
copy_workspaces = false
call_timeout_s = 0.4
max_retries = 0

[limits]
max_concurrent = {THREADS}
adaptive = {str(adaptive).lower()}
workers = 0

[models."sim/small"]
latency_s = 0.05
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
system_prompt = "Answer."
cascade = ["sim/small"]
tools = ["finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "Answer {{n}}."
repeat = {THREADS}

[[tasks.script]]
tool = "finish"
args = {{ answer = "ok" }}
"""


async def _run_under_load(live_factory, adaptive: bool) -> tuple[Live, int]:
    """Runs the project while a load stalls the loop for 0.6 s (longer than the 0.4 s call
    timeout) every 0.3 s until every thread ended; returns the most calls seen in flight."""
    loop = asyncio.get_running_loop()
    stop = False

    def hog() -> None:
        if not stop:
            time.sleep(0.6)
            loop.call_later(0.3, hog)

    loop.call_soon(hog)
    live = await live_factory(_project(adaptive))
    in_flight = most = 0

    def count(ev) -> None:
        nonlocal in_flight, most
        if ev.kind is EventKind.LLM_STARTED:
            in_flight += 1
            most = max(most, in_flight)
        elif ev.kind in (EventKind.LLM_FINISHED, EventKind.LLM_FAILED):
            in_flight -= 1

    live.bus.subscribe(count)
    try:
        ids = [f"t-{n}" for n in range(1, THREADS + 1)]
        await live.waiter.until(lambda: all(ended(live, t)() for t in ids), timeout=120)
    finally:
        stop = True
    return live, most


async def test_under_a_stalling_load_every_call_ends_and_none_times_out(live_factory) -> None:
    live, most = await _run_under_load(live_factory, adaptive=True)
    failed = [e for e in live.events if e.kind is EventKind.LLM_FAILED]
    assert failed == []
    states = {v.state for v in live.bus.state.threads.values()}
    assert states == {ThreadState.DONE}
    gate = live.sup.calls
    assert gate.aimd.cuts >= 1  # the stalls closed the gate down
    assert most <= START_LIMIT + THREADS // 2  # never all of max_concurrent at once
    assert gate.in_flight == 0


async def test_the_fixed_gate_admits_every_thread_at_once_and_still_no_call_times_out(
    live_factory,
) -> None:
    """`adaptive = false` is the old admission (everything at once); the timeouts still
    count provider time, so the stalls fail nothing."""
    live, most = await _run_under_load(live_factory, adaptive=False)
    assert [e for e in live.events if e.kind is EventKind.LLM_FAILED] == []
    assert live.sup.calls.aimd.cuts == 0 and live.sup.calls.limit == THREADS
    assert most > START_LIMIT


def test_the_limits_keys_are_checked(tmp_path) -> None:
    root = write_project(tmp_path / "p", _project(True).replace("adaptive = true", "adaptive = 2"))
    from tower.core.project import ProjectError

    with pytest.raises(ProjectError) as err:
        load_project(root)
    assert "adaptive" in str(err.value)


# --- on screen ----------------------------------------------------------------------------

SLOW = """
[project]
name = "held"
[limits]
max_concurrent = 60
[models."sim/small"]
latency_s = 30
tokens_per_s = 0
[[agents]]
name = "a"
cascade = ["sim/small"]
tools = ["finish"]
[[tasks]]
id = "t"
agent = "a"
prompt = "p {n}"
repeat = 60
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_the_budget_bar_says_when_tower_holds_calls_back(tmp_path) -> None:
    """60 threads may run, the gate starts at 32 calls: the other 28 threads are running but
    their calls wait for tower, and the bar says how many, apart from any provider wait."""
    from tests.tui_harness import drawn, tui

    async with tui(tmp_path, SLOW, files={}) as t:
        gate = t.app.sup.calls
        await t.until(lambda: gate.in_flight == START_LIMIT and gate.waiting == 28, "held")
        bar = t.app.budget_bar
        await t.until(lambda: "held back" in drawn(bar), "the bar redrawn")
        assert f"28 calls held back by tower, {START_LIMIT} in flight (lag" in drawn(bar)
        assert "60 running" in drawn(bar)
