"""Model calls in worker processes (core/callworkers.py), against real child processes.

The guarantees: a session gives the same results with its calls in workers as in-process;
a cap is never overshot while calls run in other processes (the ledger books every
reservation before a call is sent); a worker SIGKILLed mid-call loses nothing but the calls
it held, which are booked as possibly billed and made again; a worker that cannot start
leaves the session running in-process; a thread paused or killed mid-call stops its call in
the worker.
"""

from __future__ import annotations

import os
import random
import signal
import sys

import pytest

from tests.conftest import Live, ended
from tower.core.callworkers import AUTO_MIN_CONCURRENT, worker_count
from tower.core.events import EventKind, ThreadState

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

PROJECT = """
[project]
name = "workers"
seed = 7
retry_backoff_s = 0
call_timeout_s = 30

[limits]
max_concurrent = {cap}
workers = {workers}
{budget}
[models."sim/small"]
latency_s = {latency}
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
cascade = ["sim/small"]
tools = ["list_dir", "read_file", "finish"]
max_steps = 8

[[tasks]]
id = "job"
agent = "a"
prompt = "Report household {{n}}."
workspace = "ws"
repeat = {repeat}

[[tasks.script]]
say = "Listing."
tool = "list_dir"
args = {{ path = "." }}

[[tasks.script]]
say = "Reading the notes."
tool = "read_file"
args = {{ path = "notes.txt" }}

[[tasks.script]]
say = "Done."
tool = "finish"
args = {{ answer = "wages $58,420.00" }}
"""

FILES = {"ws/notes.txt": "Household 12: wages $58,420.00, withheld $4,890.00.\n" * 3}


def project(
    workers: int | str = 2,
    repeat: int = 1,
    cap: int = 16,
    latency: float = 0.0,
    budget: str = "",
) -> str:
    w = f'"{workers}"' if isinstance(workers, str) else str(workers)
    return PROJECT.format(workers=w, repeat=repeat, cap=cap, latency=latency, budget=budget)


async def ready_live(live_factory, toml: str) -> Live:
    """A session whose workers all take calls before any thread starts."""
    live = await live_factory(toml, FILES, approve="all", spawn_tasks=False)
    assert live.sup.pool is not None
    await live.sup.pool.wait_ready()
    return live


def outcome(live: Live) -> dict[str, tuple[str, str | None, float, int]]:
    return {
        tid: (str(v.state), v.answer, round(v.cost_usd, 9), v.tokens)
        for tid, v in live.bus.state.threads.items()
    }


def test_auto_is_one_per_core_for_a_large_project_only() -> None:
    assert worker_count("auto", AUTO_MIN_CONCURRENT, cores=4) == 4
    assert worker_count("auto", AUTO_MIN_CONCURRENT - 1, cores=4) == 0
    assert worker_count("auto", 10_000, cores=1) == 0  # one core: a worker only adds a hop
    assert worker_count(3, 1, cores=1) == 3  # said outright: as said
    assert worker_count(0, 10_000, cores=8) == 0


async def test_calls_in_workers_give_what_in_process_calls_give(live_factory) -> None:
    n = 24
    results = []
    for workers in (0, 2):
        live = await live_factory(project(workers), FILES, approve="all", spawn_tasks=False)
        if workers:
            assert live.sup.pool is not None and live.sup.pool.size == 2
            await live.sup.pool.wait_ready()
        else:
            assert live.sup.pool is None
        tids = [live.sup.spawn_task("job") for _ in range(n)]
        await live.waiter.until(ended(live, *tids))
        results.append(outcome(live))
        if workers:
            answered = [w.answered for w in live.sup.pool.workers if w is not None]
            # Every call went to a worker, and both workers took their share.
            assert sum(answered) == 3 * n and min(answered) > 0, answered
    in_process, in_workers = results
    assert in_workers == in_process
    assert all(s == "done" and a == "wages $58,420.00" for s, a, *_ in in_workers.values())


async def test_a_worker_killed_mid_call_loses_only_its_calls(live_factory) -> None:
    live = await ready_live(live_factory, project(workers=1, latency=1.0))
    pool = live.sup.pool
    assert pool is not None
    tids = [live.sup.spawn_task("job") for _ in range(6)]
    worker = pool.workers[0]
    assert worker is not None
    # Every thread's first call is in the worker (each takes 0.5-1.5 s there): the worker
    # is killed in that very moment, with what each thread holds in the ledger noted.
    reserved: dict[str, float] = {}

    def kill_when_all_in_flight() -> bool:
        if not reserved and len(worker.pending) == 6:
            reserved.update({t: live.sup.ledger.threads[t].reserved_usd for t in tids})
            os.kill(worker.proc.pid, signal.SIGKILL)
        return bool(reserved)

    await live.waiter.until(kill_when_all_in_flight)
    assert all(r > 0 for r in reserved.values())
    await live.waiter.until(ended(live, *tids), timeout=60)

    lost = [e for e in live.events if e.kind is EventKind.LLM_LOST]
    # Answers the worker wrote before it died are still read: only the rest are lost (and
    # a call sent in the instant between the kill and its discovery, which is lost too).
    assert lost and len(lost) == pool.lost
    lost_usd: dict[str, float] = {t: 0.0 for t in tids}
    for e in lost:
        # Booked at the reservation its own llm_started recorded.
        started = [s for s in live.kinds(e.thread, EventKind.LLM_STARTED) if s.seq < e.seq]
        assert e.payload["reserved_usd"] == pytest.approx(started[-1].payload["reserved_usd"])
        assert "possibly billed" in e.payload["reason"]
        lost_usd[e.thread] += e.payload["reserved_usd"]
    for t in tids:
        v = live.view(t)
        assert v.state is ThreadState.DONE and v.answer == "wages $58,420.00"
        # A lost call was made again, under a new call id: one more start for each.
        n_lost = sum(e.thread == t for e in lost)
        assert len(live.kinds(t, EventKind.LLM_STARTED)) == 3 + n_lost
        assert len(live.kinds(t, EventKind.LLM_FINISHED)) == 3
        # Booked: what the finished calls cost, plus the lost ones at their reservations.
        spent = sum(e.payload["cost_usd"] for e in live.kinds(t, EventKind.LLM_FINISHED))
        assert live.sup.ledger.threads[t].spent_usd == pytest.approx(spent + lost_usd[t])
        assert v.lost_usd == pytest.approx(lost_usd[t])
    assert live.bus.state.budget.lost_usd == pytest.approx(sum(lost_usd.values()))
    assert live.sup.ledger.open_reservations == 0
    # A new worker takes the dead one's place (calls made meanwhile ran in-process).
    await pool.wait_ready()
    replaced = pool.workers[0]
    assert replaced is not None and replaced is not worker and replaced.proc.returncode is None


async def test_a_session_cap_holds_with_calls_in_two_workers_and_a_kill(live_factory) -> None:
    """The cap property of test_budget.py, with the calls in other processes: at every
    event, spending plus reservations stays within the session's cap and every thread's,
    and a worker killed in the middle does not change that (lost calls count as spent)."""
    rng = random.Random(15)
    cap_usd = 0.004  # a few dozen of these calls
    live = await ready_live(
        live_factory,
        project(workers=2, latency=0.2, cap=40, budget=f"\n[budget]\nusd = {cap_usd}\n"),
    )
    pool, ledger = live.sup.pool, live.sup.ledger
    assert pool is not None
    thread_caps = {}
    breaches: list[str] = []

    def check(_ev: object) -> None:
        s = ledger.session
        if s.spent_usd + s.reserved_usd > cap_usd + 1e-12:
            breaches.append(f"session {s.spent_usd} + {s.reserved_usd} > {cap_usd}")
        for t, c in thread_caps.items():
            a = ledger.threads.get(t)
            if a is not None and a.spent_usd + a.reserved_usd > c + 1e-12:
                breaches.append(f"{t}: {a.spent_usd} + {a.reserved_usd} > {c}")

    live.bus.subscribe(check)
    for _ in range(40):
        usd = round(rng.uniform(0.0002, 0.0006), 6) if rng.random() < 0.5 else None
        tid = live.sup.spawn_task("job", budget_usd=usd)
        if usd is not None:
            thread_caps[tid] = usd
    killed = False

    def kill_once() -> bool:
        nonlocal killed
        w = pool.workers[1]
        if not killed and w is not None and len(w.pending) >= 5:
            os.kill(w.proc.pid, signal.SIGKILL)
            killed = True
        return killed

    await live.waiter.until(kill_once, timeout=60)
    # Past the caps a thread asks for more; headless, nobody raises a budget: it fails.
    await live.waiter.until(
        lambda: all(v.state.ended for v in live.bus.state.threads.values()), timeout=90
    )
    assert not breaches, breaches[:5]
    assert pool.lost >= 5 and ledger.open_reservations == 0
    states = [(v.state, v.reason) for v in live.bus.state.threads.values()]
    assert (ThreadState.FAILED, "budget") in states, "the caps should have stopped some"
    assert (ThreadState.DONE, "finished") in states
    assert ledger.session.spent_usd <= cap_usd + 1e-12


async def test_workers_that_cannot_start_leave_the_calls_in_process(
    live_factory, monkeypatch
) -> None:
    import tower.core.callworkers as cw

    real = cw.WorkerPool.__init__

    def broken(self, size, registration, command=None):  # type: ignore[no-untyped-def]
        real(self, size, registration, [sys.executable, "-c", "import sys; sys.exit(3)"])

    monkeypatch.setattr(cw.WorkerPool, "__init__", broken)
    live = await live_factory(project(workers=2, repeat=8), FILES, approve="all")
    pool = live.sup.pool
    assert pool is not None
    tids = [f"job-{i}" for i in range(1, 9)]
    await live.waiter.until(ended(live, *tids), timeout=60)
    assert all(live.view(t).state is ThreadState.DONE for t in tids)
    assert not [e for e in live.events if e.kind is EventKind.LLM_LOST]  # none was sent
    assert pool.ready == 0 and pool.lost == 0


async def test_a_thread_killed_mid_call_stops_its_call_in_the_worker(live_factory) -> None:
    live = await ready_live(live_factory, project(workers=1, latency=5.0))
    pool = live.sup.pool
    assert pool is not None
    worker = pool.workers[0]
    assert worker is not None
    a, b = live.sup.spawn_task("job"), live.sup.spawn_task("job")
    await live.waiter.until(lambda: len(worker.pending) == 2)
    finished = len(live.kinds(a, EventKind.LLM_FINISHED))
    live.sup.kill(a)
    await live.waiter.until(lambda: len(worker.pending) == 1)
    assert live.view(a).state is ThreadState.KILLED
    assert live.sup.ledger.threads[a].reserved_usd == 0
    assert live.view(b).state is ThreadState.RUNNING  # the other call goes on
    assert len(live.kinds(a, EventKind.LLM_FINISHED)) == finished  # its call never ends


# --- a real OpenAI-compatible server, called from a worker ----------------------------------


async def openai_live(live_factory, server, toml: str) -> Live:
    """The test_openai_path project with one worker, ready before task "t" is spawned."""
    live = await ready_live(live_factory, toml + "\n[limits]\nworkers = 1\n")
    assert live.sup.spawn_task("t") == "t"
    return live


async def test_a_worker_call_to_a_server_costs_what_litellm_says(live_factory) -> None:
    from tests.fake_openai import FakeOpenAI, Usage, tool_reply
    from tests.functional.test_openai_path import MODEL, finish_reply, project_toml
    from tests.functional.test_openai_path import reference_cost as reference

    first, second = Usage(900, 40, cached_tokens=512), Usage(1_100, 30)
    async with FakeOpenAI() as server:
        server.script(
            tool_reply("list_dir", {"path": "."}, "call_ls", text="Looking.", usage=first),
            finish_reply("two files", second),
        )
        live = await openai_live(live_factory, server, project_toml(server, [MODEL]))
        await live.waiter.until(ended(live, "t"))
        assert live.view("t").state is ThreadState.DONE and live.view("t").answer == "two files"
        assert live.sup.pool is not None and live.sup.pool.workers[0].answered == 2
        finished = live.kinds("t", EventKind.LLM_FINISHED)
        for ev, usage in zip(finished, (first, second), strict=True):
            p = ev.payload
            assert p["usage"]["prompt_tokens"] == usage.prompt_tokens
            assert p["usage"]["cached_tokens"] == (usage.cached_tokens or 0)
            assert p["cost_usd"] == pytest.approx(await reference(server, MODEL, usage), rel=1e-12)
        assert finished[0].payload["tool_calls"][0]["id"] == "call_ls"
        assert finished[0].payload["text"] == "Looking."
        tool_msgs = [m for m in server.requests[1].messages if m["role"] == "tool"]
        assert tool_msgs[0]["tool_call_id"] == "call_ls"


async def test_a_worker_prices_with_the_projects_prices_and_sends_its_key(
    live_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The project's prices cross to the worker (its litellm cost map), and so does the key
    named by api_key_env; the key reaches the server and nothing recorded."""
    from tests.fake_openai import FakeOpenAI, Usage
    from tests.functional.test_openai_path import finish_reply, project_toml

    monkeypatch.setenv("LOCAL_LLM_KEY", "local-secret-123")
    model = "openai/priced-local-model"
    async with FakeOpenAI() as server:
        toml = project_toml(server, [model], api_key_env="LOCAL_LLM_KEY") + (
            "input_usd_per_mtok = 2.0\noutput_usd_per_mtok = 8.0\ncached_input_usd_per_mtok = 0.5\n"
        )
        server.script(finish_reply("two files", Usage(1_000, 50, cached_tokens=400)))
        live = await openai_live(live_factory, server, toml)
        await live.waiter.until(ended(live, "t"))
        (fin,) = live.kinds("t", EventKind.LLM_FINISHED)
        assert fin.payload["price_known"] is True
        assert fin.payload["cost_usd"] == pytest.approx((600 * 2 + 400 * 0.5 + 50 * 8) / 1e6)
        assert server.requests[0].headers["authorization"] == "Bearer local-secret-123"
        await live.store.flush()
    import sqlite3

    conn = sqlite3.connect(live.store.path)
    try:
        rows = conn.execute("SELECT payload FROM events").fetchall()
    finally:
        conn.close()
    assert rows and not any("local-secret-123" in p for (p,) in rows)


async def test_a_providers_retry_after_crosses_from_the_worker(live_factory) -> None:
    from tests.fake_openai import FakeOpenAI, error_reply
    from tests.functional.test_openai_path import MODEL, finish_reply, project_toml

    async with FakeOpenAI() as server:
        server.script(
            error_reply(
                429,
                "Rate limit reached.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": "0.5"},
            ),
            finish_reply("fine"),
        )
        live = await openai_live(live_factory, server, project_toml(server, [MODEL]))
        await live.waiter.until(ended(live, "t"))
        assert live.view("t").state is ThreadState.DONE
        [failed] = live.kinds("t", EventKind.LLM_FAILED)
        assert "rate limited (429)" in failed.payload["error"] and failed.payload["retryable"]
        second = live.kinds("t", EventKind.LLM_STARTED)[1]
        assert second.ts - failed.ts >= 0.45


# --- the protocol against hostile workers ---------------------------------------------------

FAKE_WORKER = """
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m["op"] == "setup":
        print(json.dumps({"ready": True}), flush=True)
    elif m["op"] == "call" and MODE == "die":
        os._exit(9)
    elif m["op"] == "call" and MODE == "malformed":
        print(json.dumps({"id": m["id"], "result": {"text": 5, "no_such_field": 1}}), flush=True)
    elif m["op"] == "call":
        print("Give Feedback / Get Help: a banner on the wrong stream", flush=True)
        print(json.dumps({"id": 999, "result": {"text": "not yours"}}), flush=True)
        print(json.dumps({"id": m["id"], "text": "hel"}), flush=True)
        result = {"text": "hello", "prompt_tokens": 3, "completion_tokens": 1,
                  "tool_calls": [{"id": "c1", "name": "finish", "arguments": "{}"}]}
        print(json.dumps({"id": m["id"], "text": "lo", "result": result}), flush=True)
"""


async def fake_pool(mode: str) -> object:
    from tower.core.callworkers import WorkerPool

    pool = WorkerPool(1, {}, [sys.executable, "-c", f"MODE = {mode!r}\n" + FAKE_WORKER])
    await pool.start()
    await pool.wait_ready()
    return pool


async def test_a_workers_stray_lines_are_skipped_and_its_answer_kept() -> None:
    from tower.core import llm

    pool = await fake_pool("chatty")
    try:
        seen: list[str] = []
        result = await pool.stream_call("sim/small", [], None, 16, 5.0, seen.append)
        assert seen == ["hel", "lo"] and result.text == "hello"
        assert result.tool_calls == [llm.ToolCall("c1", "finish", "{}")]
        assert (result.prompt_tokens, result.completion_tokens) == (3, 1)
    finally:
        await pool.stop()


async def test_a_worker_that_dies_on_a_call_loses_it_as_possibly_billed() -> None:
    from tower.core import llm

    pool = await fake_pool("die")
    try:
        with pytest.raises(llm.CallLost, match=r"exited .* possibly billed"):
            await pool.stream_call("sim/small", [], None, 16, 5.0, lambda _t: None)
        assert pool.lost == 1
    finally:
        await pool.stop()


# --- from the orchestrator's seat -------------------------------------------------------------


async def test_the_budget_bar_shows_the_workers_and_one_lost(tmp_path) -> None:
    """The bar says how many workers take calls: 2/2 once they loaded litellm, 1/2 while one
    killed is replaced, 2/2 again; the threads meanwhile finish."""
    from tests.tui_harness import drawn, tui

    toml = project(workers=2, repeat=40, latency=0.5, cap=8)
    async with tui(tmp_path, toml, files=FILES) as t:
        bar = t.app.budget_bar
        await t.until(lambda: "in 2/2 workers" in drawn(bar), "both workers ready", 60)
        pool = t.app.sup.pool
        assert pool is not None
        victim = pool.workers[0]
        assert victim is not None
        os.kill(victim.proc.pid, signal.SIGKILL)
        await t.until(lambda: "in 1/2 workers" in drawn(bar), "one worker down", 30)
        await t.until(lambda: "in 2/2 workers" in drawn(bar), "replaced", 60)
        assert pool.workers[0] is not victim
        await t.until(lambda: t.state().all_ended, "every thread ended", 120)
        assert t.state().count(ThreadState.DONE) == 40


async def test_no_worker_process_can_be_started_the_session_runs_in_process(
    live_factory, monkeypatch, tmp_path
) -> None:
    import tower.core.callworkers as cw

    real = cw.WorkerPool.__init__

    def missing(self, size, registration, command=None):  # type: ignore[no-untyped-def]
        real(self, size, registration, [str(tmp_path / "no-such-python")])

    monkeypatch.setattr(cw.WorkerPool, "__init__", missing)
    live = await live_factory(project(workers=2, repeat=4), FILES, approve="all")
    assert live.sup.pool is None
    tids = [f"job-{i}" for i in range(1, 5)]
    await live.waiter.until(ended(live, *tids), timeout=60)
    assert all(live.view(t).state is ThreadState.DONE for t in tids)


async def test_a_malformed_answer_fails_its_call_and_the_worker_goes_on() -> None:
    from tower.core import llm

    pool = await fake_pool("malformed")
    try:
        for _ in range(2):  # the reader survived the first
            with pytest.raises(llm.CallError, match="malformed answer"):
                await pool.stream_call("sim/small", [], None, 16, 5.0, lambda _t: None)
        assert pool.ready == 1 and pool.lost == 0
    finally:
        await pool.stop()
