"""Per-model requests/min and tokens/min caps over a sliding minute: pure arithmetic."""

from __future__ import annotations

import itertools

from tower.core.ratelimit import WINDOW_S, RateWindow


def test_no_caps_never_wait() -> None:
    w = RateWindow()
    for i in range(1000):
        w.record(float(i) / 1000, 10_000)
    assert w.wait(1.0, 10_000) == (0.0, "")


def test_rpm_waits_for_the_oldest_call_of_the_minute_to_age_out() -> None:
    w = RateWindow(rpm=3)
    for t in (0.0, 10.0, 20.0):
        assert w.wait(t, 1)[0] == 0.0
        w.record(t, 1)
    delay, why = w.wait(30.0, 1)
    assert delay == WINDOW_S - 30.0 and why == "3 requests/min"
    assert w.wait(60.0, 1)[0] == 0.0  # the call at 0 s has left the minute
    w.record(60.0, 1)
    assert w.wait(61.0, 1)[0] == 10.0 + WINDOW_S - 61.0


def test_tpm_waits_until_enough_tokens_age_out() -> None:
    w = RateWindow(tpm=1000)
    w.record(0.0, 600)
    w.record(5.0, 300)
    assert w.wait(6.0, 100)[0] == 0.0
    delay, why = w.wait(6.0, 200)  # 900 + 200 > 1000: the 600 at 0 s must go
    assert delay == WINDOW_S - 6.0 and why == "1,000 tokens/min"
    delay, _ = w.wait(61.0, 500)  # 300 left in the minute: fits
    assert delay == 0.0


def test_a_call_larger_than_the_cap_waits_for_an_empty_minute_then_goes() -> None:
    w = RateWindow(tpm=1000)
    w.record(0.0, 10)
    assert w.wait(1.0, 5000)[0] == WINDOW_S - 1.0
    assert w.wait(WINDOW_S, 5000)[0] == 0.0


def test_both_caps_report_the_longer_wait() -> None:
    w = RateWindow(rpm=2, tpm=100)
    w.record(0.0, 90)
    w.record(30.0, 5)
    delay, why = w.wait(31.0, 20)
    assert delay == WINDOW_S - 31.0  # both wait for the call at 0 s
    w2 = RateWindow(rpm=1, tpm=100)
    w2.record(0.0, 10)
    w2.record(20.0, 85)
    delay, why = w2.wait(21.0, 10)
    assert (delay, why) == (20.0 + WINDOW_S - 21.0, "1 requests/min")


RPM_PROJECT = """
[project]
name = "rpm"

[models."sim/instant"]
rpm = 1

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "go"
repeat = 3

[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_the_supervisor_spaces_calls_and_says_what_threads_wait_for(
    live_factory, monkeypatch
) -> None:
    from tower.core import ratelimit
    from tower.core.events import EventKind

    monkeypatch.setattr(ratelimit, "WINDOW_S", 0.3)  # a short "minute"
    live = await live_factory(RPM_PROJECT)
    await live.waiter.until(lambda: live.bus.state.all_ended and len(live.bus.state.threads) == 3)
    starts = sorted(e.ts for e in live.events if e.kind is EventKind.LLM_STARTED)
    assert len(starts) == 3
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(starts))
    reasons = [e.payload.get("reason", "") for e in live.events if e.kind is EventKind.THREAD_STATE]
    assert reasons.count("waiting for sim/instant: 1 requests/min") >= 2


SLOT_PROJECT = """
[project]
name = "slots"

[models."sim/small"]
max_concurrent = 1
latency_s = 0.2
tokens_per_s = 0

[[agents]]
name = "a"
cascade = ["sim/small"]
tools = ["finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "go"
repeat = 2

[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_a_queued_thread_says_which_model_slot_it_waits_for(live_factory) -> None:
    from tower.core.events import EventKind, ThreadState

    live = await live_factory(SLOT_PROJECT)
    await live.waiter.until(lambda: live.bus.state.all_ended and len(live.bus.state.threads) == 2)
    waits = [
        (e.thread, e.payload.get("reason"))
        for e in live.events
        if e.kind is EventKind.THREAD_STATE and e.payload["state"] == ThreadState.QUEUED
    ]
    assert ("t-2", "waiting for a sim/small slot (1)") in waits
    assert all(t == "t-2" for t, _ in waits)
