"""The batch lane: a lane's calls go through the provider's batch API (litellm's files and
batches), at batch prices, each reserved before its batch is sent, each recorded like any
call; a lane's window holds its tasks in the queue until it opens.

The counterpart is real HTTP: tests/fake_openai.py serves /v1/files and /v1/batches (and
the output file's content), reached through litellm's own batch functions."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Live, ended
from tests.fake_openai import FakeOpenAI, Received, Reply, ScriptedCall, Usage
from tower.core import llm
from tower.core.batchlane import window_state
from tower.core.events import EventKind, ThreadState

MODEL = "openai/gpt-4o-mini"
FILES = {"ws/a.txt": "alpha\n"}


@pytest.fixture
def server(fake_server: FakeOpenAI) -> FakeOpenAI:
    return fake_server


def answer(req: Received) -> Reply:
    """Read a.txt first, then finish with what it said (from the request itself)."""
    tool_msgs = [m for m in req.messages if m.get("role") == "tool"]
    if not tool_msgs:
        call = ScriptedCall(f"call_rd_{len(req.messages)}", "read_file", '{"path": "a.txt"}')
        return Reply(tool_calls=[call], usage=Usage(500, 20))
    said = str(tool_msgs[-1]["content"]).strip()
    return Reply(
        tool_calls=[ScriptedCall("call_fin", "finish", f'{{"answer": "{said}"}}')],
        usage=Usage(600, 10),
    )


def project(server: FakeOpenAI, repeat: int = 3, extra: str = "", budget: str = "") -> str:
    return f"""
[project]
name = "batched"
retry_backoff_s = 0
max_retries = 0
{budget}

[lanes.batch]
collect_s = 0.3
poll_s = 0.05
{extra}

[[agents]]
name = "a"
cascade = ["{MODEL}"]
tools = ["read_file", "finish"]
max_tokens = 100

[[tasks]]
id = "t"
agent = "a"
prompt = "Read a.txt and report."
workspace = "ws"
repeat = {repeat}
lane = "batch"

[models."{MODEL}"]
api_base = "{server.base_url}"
"""


async def test_calls_go_through_the_batch_api_at_batch_prices(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.fallback = answer
    live: Live = await live_factory(project(server), FILES)
    tids = ["t-1", "t-2", "t-3"]
    await live.waiter.until(ended(live, *tids), timeout=60)
    assert all(live.view(t).state is ThreadState.DONE for t in tids)
    assert all(live.view(t).answer == "alpha" for t in tids)

    # Nothing went to the chat endpoint: two batches (one a step), three requests each.
    paths = [r.path for r in server.requests]
    assert not [p for p in paths if p.endswith("/chat/completions")]
    assert len(server.batches) == 2 and len(server.batch_requests) == 6
    assert paths.count("/v1/files") == 2 and paths.count("/v1/batches") == 2

    events = live.events
    started = [e for e in events if e.kind is EventKind.LLM_STARTED]
    assert [e.payload["lane"] for e in started] == ["batch"] * 6
    batches = [e for e in events if e.kind is EventKind.BATCH]
    submitted = [e for e in batches if e.payload["status"] == "submitted"]
    assert len(submitted) == 2
    for sub in submitted:
        calls = sub.payload["calls"]
        # Each call was reserved (its llm_started) before the batch that holds it was sent.
        assert all(e.seq < sub.seq for e in started if e.payload["call"] in calls)
        running = [b for b in batches if b.payload["batch"] == sub.payload["batch"]]
        assert [b.payload["status"] for b in running] == ["submitted", "running", "completed"]
        assert running[1].payload["provider_id"] in server.batches
    sent = {line["custom_id"] for line in server.batch_requests}
    assert sent == {e.payload["call"] for e in started}
    assert {line["body"]["model"] for line in server.batch_requests} == {"gpt-4o-mini"}

    info = llm.load_litellm().model_cost["gpt-4o-mini"]
    inp, out = info["input_cost_per_token_batches"], info["output_cost_per_token_batches"]
    assert inp < info["input_cost_per_token"]
    finished = [e for e in events if e.kind is EventKind.LLM_FINISHED]
    assert len(finished) == 6
    for ev in finished:
        u = ev.payload["usage"]
        expected = u["prompt_tokens"] * inp + u["completion_tokens"] * out
        assert ev.payload["cost_usd"] == pytest.approx(expected, rel=1e-9)
        reserved = next(s for s in started if s.payload["call"] == ev.payload["call"])
        assert reserved.payload["reserved_usd"] >= ev.payload["cost_usd"]
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)
    assert not live.bus.state.batches  # none left open


async def test_a_batch_that_expires_fails_its_calls_with_one_line(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.batch_status = "expired"
    live: Live = await live_factory(project(server, repeat=2), FILES)
    await live.waiter.until(ended(live, "t-1", "t-2"), timeout=60)
    for tid in ("t-1", "t-2"):
        assert live.view(tid).state is ThreadState.FAILED
    failed = [e for e in live.events if e.kind is EventKind.LLM_FAILED]
    assert failed and all("expired" in e.payload["error"] for e in failed)
    assert all("\n" not in e.payload["error"] for e in failed)
    assert live.bus.state.budget.spent_usd == 0
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)


async def test_a_server_without_a_batch_api_fails_the_lane_in_one_line(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """llama.cpp's server has no /v1/files: the lane's calls fail saying so, not "model not
    found", and no call is made the ordinary way behind the person's back."""
    server.batch_api = False
    live: Live = await live_factory(project(server, repeat=2), FILES)
    await live.waiter.until(ended(live, "t-1", "t-2"), timeout=60)
    for tid in ("t-1", "t-2"):
        assert live.view(tid).state is ThreadState.FAILED
    failed = [e.payload["error"] for e in live.events if e.kind is EventKind.LLM_FAILED]
    assert failed and all(f"{server.base_url} has no batch API (HTTP 404)" in e for e in failed)
    assert not [r for r in server.requests if r.path.endswith("/chat/completions")]
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)


async def test_a_cap_sends_only_calls_it_reserved(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """A session cap with room for two first calls: the batch holds those two; the third
    thread is refused before anything is sent for it (headless: it ends on the budget)."""
    server.fallback = answer
    probe: Live = await live_factory(project(server, repeat=1), FILES)
    await probe.waiter.until(ended(probe, "t"), timeout=60)
    one = next(e for e in probe.events if e.kind is EventKind.LLM_STARTED).payload["reserved_usd"]
    await probe.sup.close()
    toml = project(server, budget=f"\n[budget]\nusd = {2.5 * one}\n")
    live: Live = await live_factory(toml, FILES, approve="all")
    tids = ["t-1", "t-2", "t-3"]
    await live.waiter.until(ended(live, *tids), timeout=60)
    states = sorted(str(live.view(t).state) for t in tids)
    assert "failed" in states
    b = live.bus.state.budget
    assert b.spent_usd <= b.limit_usd + 1e-12
    first = next(
        e for e in live.events if e.kind is EventKind.BATCH and e.payload["status"] == "submitted"
    )
    assert len(first.payload["calls"]) == 2


# --- the lane's window ---------------------------------------------------------------------


def test_window_state_wraps_midnight_and_names_the_next_opening() -> None:
    at = datetime(2026, 12, 1, 0, 30)
    assert window_state((60, 360), at) == (False, datetime(2026, 12, 1, 1, 0))
    assert window_state((60, 360), at.replace(hour=3)) == (True, None)
    assert window_state((60, 360), at.replace(hour=6, minute=0)) == (
        False,
        datetime(2026, 12, 2, 1, 0),
    )
    assert window_state((22 * 60, 6 * 60), at) == (True, None)  # 22:00-06:00 at 00:30
    assert window_state((22 * 60, 6 * 60), at.replace(hour=12)) == (
        False,
        datetime(2026, 12, 1, 22, 0),
    )
    assert window_state(None, at) == (True, None)


async def test_a_closed_window_holds_its_tasks_until_it_opens(
    live_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside its window the lane's tasks wait in the queue saying when they start; when
    the window opens, they start."""
    import tower.core.supervisor as sup_mod

    now = [datetime(2026, 12, 1, 0, 59, 59)]

    class Clock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Clock:  # type: ignore[override]
            return cls.fromtimestamp(now[0].timestamp())

    monkeypatch.setattr(sup_mod, "datetime", Clock)
    toml = """
[project]
name = "night"
retry_backoff_s = 0

[lanes.night]
window = "01:00-06:00"
batch = false

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "go"
lane = "night"
[[tasks.script]]
tool = "finish"
args = { answer = "done" }
"""
    live: Live = await live_factory(toml)
    await live.waiter.until(lambda: live.view("t").reason == "lane opens at 01:00")
    assert live.view("t").state is ThreadState.QUEUED
    assert not [e for e in live.events if e.kind is EventKind.LLM_STARTED]
    now[0] += timedelta(seconds=2)  # the timer fires about a second later: 01:00:01
    await live.waiter.until(ended(live, "t"), timeout=30)
    assert live.view("t").state is ThreadState.DONE and live.view("t").answer == "done"


# --- from the orchestrator's seat -------------------------------------------------------------

SIM_LANE = """
[project]
name = "night-batch"
retry_backoff_s = 0

[lanes.batch]
collect_s = 0.1
poll_s = 3

[lanes.later]
window = "{window}"

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]

[[tasks]]
id = "now"
agent = "a"
prompt = "go"
lane = "batch"
repeat = 2
[[tasks.script]]
tool = "finish"
args = {{ answer = "batched" }}

[[tasks]]
id = "late"
agent = "a"
prompt = "go later"
lane = "later"
[[tasks.script]]
tool = "finish"
args = {{ answer = "never today" }}
"""


async def test_the_list_shows_threads_waiting_on_their_batch_and_when_a_lane_opens(
    tmp_path: Any,
) -> None:
    """The person sees each batched thread as "batch <age>" while its batch is out, the
    lane's tasks outside its window as "at HH:MM"; the detail of a batched thread says
    which batch it waits in; then the batch answers and the threads finish."""
    from textual.widgets import RichLog

    from tests.tui_harness import tui
    from tower.ui.screens.detail import ThreadScreen

    opens = datetime.now() + timedelta(hours=2)
    closes = opens + timedelta(hours=1)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    async with tui(tmp_path, SIM_LANE.format(window=window)) as t:
        await t.until(
            lambda: all(
                tid in t.state().threads and t.view(tid).batch is not None
                for tid in ("now-1", "now-2")
            ),
            "both in a batch",
        )
        await t.settle()
        for tid in ("now-1", "now-2"):
            assert t.view(tid).state is ThreadState.WAITING
            assert " batch " in t.row(tid) and "waiting" not in t.row(tid)
        assert f" at {opens:%H:%M} " in t.row("late")
        assert t.view("late").state is ThreadState.QUEUED
        batch = t.view("now-1").batch
        assert batch is not None and batch in t.state().batches
        t.threads.focus()
        while t.threads.current != "now-1":
            await t.press("down")
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == "now-1"
        log = screen.query_one(RichLog)
        await t.until(
            lambda: f"● waiting — batch {batch}" in "\n".join(s.text for s in log.lines),
            "the transcript names the batch",
        )
        await t.press("escape")
        await t.until(lambda: t.view("now-1").state.ended and t.view("now-2").state.ended, "done")
        assert t.view("now-1").answer == "batched" and t.view("now-1").batch is None
        assert not t.state().batches
        assert t.view("late").state is ThreadState.QUEUED  # still waiting for its window


# --- hostile output, and a crash with a batch out ------------------------------------------------


def test_a_batch_output_of_hostile_lines_fails_only_those_calls() -> None:
    from tower.core.batchlane import _answers

    good = {
        "custom_id": "c1",
        "response": {
            "status_code": 200,
            "body": {
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1},
            },
        },
    }
    lines = [
        json.dumps(good),
        "not json at all",
        json.dumps({"response": {"status_code": 200}}),  # no custom_id
        json.dumps(
            {
                "custom_id": "c2",
                "response": {"status_code": 429, "body": {"error": {"message": "slow down"}}},
            }
        ),
        json.dumps({"custom_id": "c3", "response": {"status_code": 200, "body": {"choices": []}}}),
        json.dumps(
            {
                "custom_id": "c4",
                "response": {
                    "status_code": 200,
                    "body": {"choices": [{"message": {"tool_calls": [{"id": 1}]}}]},
                },
            }
        ),
        "",
    ]
    out = _answers("\n".join(lines), "m")
    assert isinstance(out["c1"], llm.CallResult) and out["c1"].text == "ok"
    assert out["c1"].prompt_tokens == 5
    assert out["c2"] == "m: HTTP 429: slow down"
    assert "wrong shape" in str(out["c3"]) and "wrong shape" in str(out["c4"])
    assert set(out) == {"c1", "c2", "c3", "c4"}


async def test_a_crash_with_a_batch_out_books_its_calls_and_makes_them_again(tmp_path: Any) -> None:
    """Killed while a batch was at the provider: the resume books each of its calls as
    possibly billed (at its reservation) and sends them again; every thread finishes."""
    import sqlite3

    from tests.helpers import write_project
    from tower.core.project import load_project
    from tower.core.session import resume_headless, run_headless
    from tower.core.store import Store

    toml = SIM_LANE.format(window="00:00-23:59").replace(
        '[lanes.later]\nwindow = "00:00-23:59"\n', ""
    )
    toml = toml[: toml.index('[[tasks]]\nid = "late"')]
    toml = toml.replace("poll_s = 3", "poll_s = 0.2")
    root = write_project(tmp_path / "p", toml, {})
    db = tmp_path / "t.db"
    ref = await run_headless(load_project(root), db, "all", None)
    session = ref.summary["session"]
    store = await Store.open(db)
    events = [ev async for ev in store.events(session)]
    await store.close()
    sub = next(
        e for e in events if e.kind is EventKind.BATCH and e.payload["status"] == "submitted"
    )
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE session = ? AND seq > ?", (session, sub.seq))
        conn.execute("DELETE FROM snapshots WHERE session = ?", (session,))
        conn.execute(
            "UPDATE sessions SET status = 'running', ended = NULL, pid = 999999999 WHERE id = ?",
            (session,),
        )
    resumed = await resume_headless(db, session, "all", None)
    assert {t: v.answer for t, v in resumed.state.threads.items()} == {
        "now-1": "batched",
        "now-2": "batched",
    }
    store = await Store.open(db)
    after = [ev async for ev in store.events(session)]
    await store.close()
    lost = [e for e in after if e.kind is EventKind.LLM_LOST]
    assert sorted(e.thread for e in lost) == sorted(sub.payload["threads"])
    reserved = {
        e.payload["call"]: e.payload["reserved_usd"]
        for e in after
        if e.kind is EventKind.LLM_STARTED and e.payload["call"] in sub.payload["calls"]
    }
    assert sorted(e.payload["reserved_usd"] for e in lost) == sorted(reserved.values())
    assert resumed.state.budget.lost_usd == pytest.approx(sum(reserved.values()))
    later = [e for e in after if e.kind is EventKind.BATCH and e.seq > sub.seq]
    assert later and later[-1].payload["status"] == "completed"
    assert not resumed.state.batches  # the batch the crash cut off is not shown as open
    assert all(v.batch is None for v in resumed.state.threads.values())
