"""The response cache ([cache] responses): an identical call already answered in this
database is served from the log, at $0, as its own event; never for a call sampled above
temperature 0 unless the project says so; reused by later runs, forks and experiments, and
by a resume after a crash. Checked against a real HTTP server (no request reaches it on a
hit) and against hostile rows in the database (a miss, never an error)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Live, ended
from tests.fake_openai import FakeOpenAI, Reply, ScriptedCall, Usage
from tests.helpers import db_events, write_project
from tower.core.events import Event, EventKind, ThreadState
from tower.core.messages import of_thread
from tower.core.project import load_project
from tower.core.responsecache import response_key, worth_keeping
from tower.core.session import fork_headless, resume_headless, run_headless

FILES = {"ws/1.txt": "alpha\n", "ws/2.txt": "beta\n", "ws/a.txt": "alpha\n"}


def project(
    temperature: str = "temperature = 0", cache: str = "responses = true", path: str = "{n}.txt"
) -> str:
    return f"""
[project]
name = "cached"
retry_backoff_s = 0

[cache]
{cache}

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["read_file", "finish"]
{temperature}

[[tasks]]
id = "t"
agent = "a"
prompt = "Read {path} and report."
workspace = "ws"
repeat = 2

[[tasks.script]]
say = "Reading."
tool = "read_file"
args = {{ path = "{path}" }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "{{last_result}}" }}
"""


def of_kind(events: list[Event], kind: EventKind) -> list[Event]:
    return [e for e in events if e.kind is kind]


async def test_a_second_run_is_served_from_the_cache_at_no_cost(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", project(), FILES)
    db = tmp_path / "t.db"
    first = await run_headless(load_project(root), db, "all", None)
    second = await run_headless(load_project(root), db, "all", None)
    answers = {t: v.answer for t, v in first.state.threads.items()}
    assert answers == {t: v.answer for t, v in second.state.threads.items()}
    assert sorted(answers.values()) == ["alpha", "beta"]
    assert first.state.budget.spent_usd > 0 and first.state.budget.cache_hits == 0
    assert second.state.budget.spent_usd == 0 and second.state.budget.tokens == 0

    one = db_events(db, first.summary["session"])
    two = db_events(db, second.summary["session"])
    paid = of_kind(one, EventKind.LLM_FINISHED)
    hits = of_kind(two, EventKind.LLM_CACHED)
    assert not of_kind(two, EventKind.LLM_FINISHED) and not of_kind(two, EventKind.LLM_STARTED)
    assert len(hits) == len(paid) == 4 == second.state.budget.cache_hits
    by_seq = {e.seq: e for e in one}
    for hit in hits:
        p = hit.payload
        assert p["source_session"] == first.summary["session"]
        source = by_seq[p["source_seq"]]
        assert source.kind is EventKind.LLM_FINISHED and source.payload["key"] == p["key"]
        assert (p["text"], p["tool_calls"]) == (
            source.payload["text"],
            source.payload["tool_calls"],
        )
        assert p["saved_usd"] == source.payload["cost_usd"]
    assert second.state.budget.cache_saved_usd == pytest.approx(first.state.budget.spent_usd)
    assert second.summary["cache_hits"] == 4
    # Each thread's conversation is what the paid run's was, message for message.
    prompts = {"a": load_project(root).agents[0].system_prompt}
    for tid in answers:
        assert of_thread(two, tid, prompts) == of_thread(one, tid, prompts)


async def test_calls_above_temperature_zero_are_never_served_unless_the_project_says_so(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    default = write_project(tmp_path / "d", project(temperature=""), FILES)  # provider default
    for _ in range(2):
        result = await run_headless(load_project(default), db, "all", None)
        assert result.state.budget.cache_hits == 0 and result.state.budget.spent_usd > 0
    events = db_events(db, result.summary["session"])
    assert all("key" not in e.payload for e in of_kind(events, EventKind.LLM_FINISHED))

    warm = write_project(tmp_path / "w", project(temperature="temperature = 0.7"), FILES)
    result = await run_headless(load_project(warm), db, "all", None)
    assert result.state.budget.cache_hits == 0
    allowed = project("temperature = 0.7", "responses = true\nany_temperature = true")
    hot = write_project(tmp_path / "h", allowed, FILES)
    first = await run_headless(load_project(hot), db, "all", None)
    again = await run_headless(load_project(hot), db, "all", None)
    assert first.state.budget.cache_hits == 0  # 0.7 was never recorded as cacheable before
    assert again.state.budget.cache_hits == 4 and again.state.budget.spent_usd == 0


async def test_off_by_default_and_an_identical_call_in_the_same_run_is_reused(
    tmp_path: Path,
) -> None:
    """Two copies of one task send identical calls: the second copy is answered by the
    first's, in the same session, before the log's writer has committed it."""
    same = project(path="1.txt") + "\n[limits]\nmax_concurrent = 1\n"
    root = write_project(tmp_path / "p", same, FILES)
    result = await run_headless(load_project(root), tmp_path / "t.db", "all", None)
    assert result.state.budget.cache_hits == 2  # the second copy's two calls
    events = db_events(tmp_path / "t.db", result.summary["session"])
    assert {e.payload["source_session"] for e in of_kind(events, EventKind.LLM_CACHED)} == {
        result.summary["session"]
    }
    off = write_project(tmp_path / "o", project(cache="").replace("[cache]\n", ""), FILES)
    for _ in range(2):
        plain = await run_headless(load_project(off), tmp_path / "t.db", "all", None)
        assert plain.state.budget.cache_hits == 0


async def test_a_fork_and_an_experiment_reuse_the_answers(tmp_path: Path) -> None:
    from tower.core.experiment import run_experiment

    root = write_project(tmp_path / "p", project(), FILES)
    db = tmp_path / "t.db"
    first = await run_headless(load_project(root), db, "all", None)
    session = first.summary["session"]
    events = db_events(db, session)
    at = of_kind(events, EventKind.THREAD_SPAWNED)[-1].seq  # before any call
    fork = await fork_headless(db, session, at, "all")
    assert fork.state.budget.spent_usd == 0 and fork.state.budget.cache_hits == 4
    variant = tmp_path / "roomier.toml"
    variant.write_text("[budget]\nthread_usd = 1.0\n")
    (score,) = await run_experiment(root, [variant], db)
    assert score.successes == 2 and score.cost_usd == 0 and score.tokens == 0


async def test_a_crash_in_a_cached_run_resumes_from_the_cache(tmp_path: Path) -> None:
    """Cut the cached run's log after its first hit: the resume rebuilds the conversation
    from the llm_cached event and answers the rest from the cache too."""
    root = write_project(tmp_path / "p", project(), FILES)
    db = tmp_path / "t.db"
    await run_headless(load_project(root), db, "all", None)
    second = await run_headless(load_project(root), db, "all", None)
    session = second.summary["session"]
    events = db_events(db, session)
    cut = of_kind(events, EventKind.LLM_CACHED)[0].seq
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE session = ? AND seq > ?", (session, cut))
        conn.execute("DELETE FROM snapshots WHERE session = ?", (session,))
        conn.execute(
            "UPDATE sessions SET status = 'running', ended = NULL, pid = 999999999 WHERE id = ?",
            (session,),
        )
    resumed = await resume_headless(db, session, "all", None)
    assert {t: v.answer for t, v in resumed.state.threads.items()} == {
        t: v.answer for t, v in second.state.threads.items()
    }
    after = db_events(db, session)
    assert not of_kind(after, EventKind.LLM_FINISHED)  # no call reached the provider
    assert len(of_kind(after, EventKind.LLM_CACHED)) == 4
    assert resumed.state.budget.spent_usd == 0


async def test_hostile_rows_are_misses_never_errors(tmp_path: Path) -> None:
    """A recorded answer of the wrong shape, and a payload that is not JSON, in another
    session of the database: the call they would answer is made, and the run is fine."""
    root = write_project(tmp_path / "p", project(), FILES)
    db = tmp_path / "t.db"
    first = await run_headless(load_project(root), db, "all", None)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, thread, payload FROM events WHERE session = ? AND kind = 'llm_finished'"
            " ORDER BY seq",
            (first.summary["session"],),
        ).fetchall()
        seq, victim, payload = rows[0]
        bad = {**json.loads(payload), "tool_calls": "not a list"}
        conn.execute(
            "UPDATE events SET payload = ? WHERE session = ? AND seq = ?",
            (json.dumps(bad), first.summary["session"], seq),
        )
        conn.execute(
            "INSERT INTO sessions (id, project, project_dir, started, status)"
            " VALUES ('junk', 'x', '/', 0, 'clean')"
        )
        conn.execute("INSERT INTO events VALUES ('junk', 1, 0, 't-1', 'llm_finished', '{not json')")
    second = await run_headless(load_project(root), db, "all", None)
    assert second.summary["threads"]["done"] == 2
    # The damaged answer is not served: that one call is made (and paid), the other three
    # are answered from the cache; the non-JSON row is skipped by the lookup.
    assert second.state.budget.cache_hits == 3
    assert second.state.budget.spent_usd > 0
    events = db_events(db, second.summary["session"])
    (paid,) = of_kind(events, EventKind.LLM_FINISHED)
    assert paid.thread == victim and paid.payload["step"] == json.loads(payload)["step"]


# --- against a real HTTP server -------------------------------------------------------------


@pytest.fixture
def server(fake_server: FakeOpenAI) -> FakeOpenAI:
    return fake_server


def http_project(server: FakeOpenAI) -> str:
    return f"""
[project]
name = "cached-http"
retry_backoff_s = 0

[cache]
responses = true

[[agents]]
name = "a"
cascade = ["openai/gpt-4o-mini"]
tools = ["read_file", "finish"]
temperature = 0

[[tasks]]
id = "t"
agent = "a"
prompt = "Read a.txt."
workspace = "ws"

[models."openai/gpt-4o-mini"]
api_base = "{server.base_url}"
"""


async def test_a_hit_sends_nothing_to_the_provider(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.script(
        Reply(
            text="Reading.",
            tool_calls=[ScriptedCall("call_rd", "read_file", '{"path": "a.txt"}')],
            usage=Usage(600, 20),
        ),
        Reply(
            tool_calls=[ScriptedCall("call_fin", "finish", '{"answer": "alpha"}')],
            usage=Usage(700, 10),
        ),
    )
    first: Live = await live_factory(http_project(server), FILES)
    await first.waiter.until(ended(first, "t"))
    assert first.view("t").answer == "alpha"
    assert len(server.requests) == 2
    assert all(r.body.get("temperature") == 0 for r in server.requests)
    await first.sup.close()

    second: Live = await live_factory(http_project(server), FILES)  # the same database
    await second.waiter.until(ended(second, "t"))
    assert second.view("t").state is ThreadState.DONE and second.view("t").answer == "alpha"
    assert len(server.requests) == 2  # nothing more reached the server
    assert second.bus.state.budget.spent_usd == 0
    hits = second.kinds("t", EventKind.LLM_CACHED)
    assert len(hits) == 2 and sum(h.payload["saved_usd"] for h in hits) == pytest.approx(
        first.bus.state.budget.spent_usd
    )


# --- the key -----------------------------------------------------------------------------------


def test_the_key_names_exactly_the_call() -> None:
    msgs = [{"role": "user", "content": "hi", "name": "x"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    base = response_key("m", msgs, tools, 100, 0)
    assert base == response_key(
        "m", [{"name": "x", "content": "hi", "role": "user"}], tools, 100, 0
    )
    assert len({
        base,
        response_key("m2", msgs, tools, 100, 0),
        response_key("m", [{"role": "user", "content": "hi!", "name": "x"}], tools, 100, 0),
        response_key("m", msgs, None, 100, 0),
        response_key("m", msgs, tools, 101, 0),
        response_key("m", msgs, tools, 100, 0.5),
    }) == 6  # fmt: skip
    assert worth_keeping("answer", [], "stop") and worth_keeping("", [{"id": 1}], "tool_calls")
    assert not worth_keeping("  ", [], "stop") and not worth_keeping("cut", [], "length")


# --- from the orchestrator's seat -------------------------------------------------------------


async def test_the_bar_and_the_transcript_show_answers_served_from_the_cache(
    tmp_path: Path,
) -> None:
    from textual.widgets import DataTable, RichLog

    from tests.tui_harness import drawn, tui
    from tower.ui.format import usd
    from tower.ui.screens.detail import ThreadScreen

    toml = project()
    paid = await run_headless(
        load_project(write_project(tmp_path / "proj", toml, FILES)), tmp_path / "t.db", "all", None
    )
    async with tui(tmp_path, toml, files=FILES) as t:
        await t.until(lambda: t.state().threads and t.state().all_ended, "both threads end")
        await t.settle()
        b = t.state().budget
        assert b.cache_hits == 4 and b.spent_usd == 0
        bar = drawn(t.app.budget_bar)
        assert f"4 cached answer(s), {usd(paid.state.budget.spent_usd)} not paid again" in bar
        await t.press("down")
        assert t.threads.current == "t-2"
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == "t-2"
        log, table = screen.query_one(RichLog), screen.query_one(DataTable)

        def transcript() -> str:
            return "\n".join(strip.text for strip in log.lines)

        await t.until(lambda: "step 2" in transcript() and table.row_count == 2, "transcript")
        heads = [ln for ln in transcript().splitlines() if "── step" in ln]
        assert len(heads) == 2 and all("from the response cache · $0" in h for h in heads)
        for hit in of_kind(await t.events("t-2"), EventKind.LLM_CACHED):
            p = hit.payload
            source = f"first paid {usd(p['saved_usd'])} in session {paid.summary['session']}"
            assert f"{source} (event {p['source_seq']})" in transcript()
        assert [str(table.get_row_at(i)[4]) for i in range(2)] == ["$0 (cache)"] * 2
