"""Context compaction: a long thread whose tool results outgrow its model's context window
finishes, with fewer prompt tokens, where without compaction it fails on the window. The
fold is an event: the transcript shows it, a summary's call is budgeted, and replay and
resume rebuild the same shortened conversation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.helpers import db_events, write_project
from tower.core.events import Event, EventKind, ThreadState
from tower.core.messages import of_thread
from tower.core.project import load_project
from tower.core.session import resume_headless, run_headless
from tower.core.store import Store

READS = 10
FILES = {
    f"ws/f{i}.txt": f"file {i} says {i * 111}.\n" + ("lorem ipsum " * 120) for i in range(READS)
}


def project(window: int, compaction: str, budget: str = "") -> str:
    steps = "".join(
        f'\n[[tasks.script]]\ntool = "read_file"\nargs = {{ path = "f{i}.txt" }}\n'
        for i in range(READS)
    )
    return f"""
[project]
name = "long"
retry_backoff_s = 0
max_retries = 0

[compaction]
{compaction}
{budget}

[models."sim/instant"]
context_window = {window}

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["read_file", "finish"]
max_steps = 30
max_tokens = 200

[[tasks]]
id = "t"
agent = "a"
prompt = "Read every file, then report what file 0 says."
workspace = "ws"
{steps}
[[tasks.script]]
tool = "finish"
args = {{ answer = "file 0 says 0" }}
"""


def prompt_tokens(events: list[Event]) -> int:
    return sum(
        e.payload["usage"]["prompt_tokens"] for e in events if e.kind is EventKind.LLM_FINISHED
    )


async def test_a_long_thread_finishes_with_fewer_prompt_tokens_instead_of_failing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    roomy = write_project(tmp_path / "roomy", project(128_000, "at = 0"), FILES)
    tight = write_project(tmp_path / "tight", project(3_000, "at = 0"), FILES)
    folded = write_project(tmp_path / "folded", project(3_000, "at = 0.7"), FILES)

    big = await run_headless(load_project(roomy), db, "all", None)
    assert big.state.threads["t"].state is ThreadState.DONE
    big_events = db_events(db, big.summary["session"])
    peak = max(
        e.payload["usage"]["prompt_tokens"] for e in big_events if e.kind is EventKind.LLM_FINISHED
    )
    assert peak > 3_000  # the whole conversation does not fit the tight window

    failed = await run_headless(load_project(tight), db, "all", None)
    view = failed.state.threads["t"]
    assert view.state is ThreadState.FAILED
    errors = [
        e.payload["error"]
        for e in db_events(db, failed.summary["session"])
        if e.kind is EventKind.LLM_FAILED
    ]
    assert errors and "context window" in errors[-1]

    ok = await run_headless(load_project(folded), db, "all", None)
    assert ok.state.threads["t"].state is ThreadState.DONE
    assert ok.state.threads["t"].answer == "file 0 says 0"
    events = db_events(db, ok.summary["session"])
    assert not [e for e in events if e.kind is EventKind.LLM_FAILED]
    folds = [e for e in events if e.kind is EventKind.COMPACTED]
    assert folds and ok.state.threads["t"].compactions == len(folds)
    for f in folds:
        p = f.payload
        assert p["mode"] == "elide" and p["window"] == 3_000 and p["cost_usd"] == 0
        assert p["tokens_before"] > 0.7 * 3_000 > p["tokens_after"]
    assert prompt_tokens(events) < prompt_tokens(big_events)
    finished = [e for e in events if e.kind is EventKind.LLM_FINISHED]
    assert max(e.payload["usage"]["prompt_tokens"] for e in finished) <= 3_000
    # What the model was last sent: every folded result elided, every other read whole.
    sent = of_thread(events, "t", {"a": load_project(folded).agents[0].system_prompt})
    gone = {c for f in folds for c in f.payload["folded"]}
    reads = {m["tool_call_id"]: m["content"] for m in sent if m["role"] == "tool"}
    assert len(reads) == READS + 1 and len(gone) >= READS // 2
    for call_id, content in reads.items():
        if call_id in gone:
            assert content.startswith("[elided by tower"), call_id
        elif content != "finished":
            assert "lorem ipsum" in content, call_id


async def test_a_summary_model_writes_the_fold_and_its_call_is_budgeted(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        project(3_000, 'at = 0.7\nmodel = "sim/small"', "\n[budget]\nusd = 0.05\n"),
        FILES,
    )
    db = tmp_path / "t.db"
    result = await run_headless(load_project(root), db, "all", None)
    view = result.state.threads["t"]
    assert view.state is ThreadState.DONE
    events = db_events(db, result.summary["session"])
    folds = [e.payload for e in events if e.kind is EventKind.COMPACTED]
    assert folds and all(p["mode"] == "summary" and p["model"] == "sim/small" for p in folds)
    assert all(p["cost_usd"] > 0 and p["reserved_usd"] >= p["cost_usd"] for p in folds)
    # The summary keeps each folded result's first line (the sim's gist).
    assert "file 0 says 0." in folds[0]["summary"]
    calls = sum(e.payload["cost_usd"] for e in events if e.kind is EventKind.LLM_FINISHED)
    assert result.state.budget.spent_usd == pytest.approx(calls + sum(p["cost_usd"] for p in folds))
    assert view.cost_usd == pytest.approx(result.state.budget.spent_usd)
    store = await Store.open(db)  # the sessions list counts the summaries' cost too
    try:
        (row,) = [r for r in await store.list_sessions() if r.id == result.summary["session"]]
    finally:
        await store.close()
    assert row.cost_usd == pytest.approx(result.state.budget.spent_usd)
    sent = of_thread(events, "t", {"a": load_project(root).agents[0].system_prompt})
    tool_msgs = [m["content"] for m in sent if m["role"] == "tool"]
    assert any(c.startswith("Summary of earlier tool results") for c in tool_msgs)


async def test_no_room_for_a_summary_elides_and_says_why(tmp_path: Path) -> None:
    """A session cap the summary's reservation does not fit: the fold still happens,
    elided, and the cap holds."""
    root = write_project(
        tmp_path / "p",
        project(3_000, 'at = 0.7\nmodel = "sim/large"', "\n[budget]\nthread_usd = 0.004\n"),
        FILES,
    )
    result = await run_headless(load_project(root), tmp_path / "t.db", "all", None)
    events = db_events(tmp_path / "t.db", result.summary["session"])
    folds = [e.payload for e in events if e.kind is EventKind.COMPACTED]
    assert folds and folds[0]["mode"] == "elide" and "no room for a summary" in folds[0]["note"]
    assert result.state.threads["t"].cost_usd <= 0.004 + 1e-12


async def test_a_resume_after_a_fold_rebuilds_the_folded_conversation(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", project(3_000, "at = 0.7"), FILES)
    db = tmp_path / "t.db"
    ref = await run_headless(load_project(root), db, "all", None)
    session = ref.summary["session"]
    events = db_events(db, session)
    cut = next(e.seq for e in events if e.kind is EventKind.COMPACTED)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE session = ? AND seq > ?", (session, cut))
        conn.execute("DELETE FROM snapshots WHERE session = ?", (session,))
        conn.execute(
            "UPDATE sessions SET status = 'running', ended = NULL, pid = 999999999 WHERE id = ?",
            (session,),
        )
    resumed = await resume_headless(db, session, "all", None)
    assert resumed.state.threads["t"].state is ThreadState.DONE
    after = db_events(db, session)
    finished = [e for e in after if e.kind is EventKind.LLM_FINISHED]
    assert max(e.payload["usage"]["prompt_tokens"] for e in finished) <= 3_000
    assert not [e for e in after if e.kind is EventKind.LLM_FAILED]


async def test_the_transcript_shows_what_was_folded(tmp_path: Path) -> None:
    """On the thread opened with enter, the person reads each fold: how many results, how,
    and the prompt before and after against the window, as the log recorded it."""
    from textual.widgets import RichLog

    from tests.tui_harness import tui
    from tower.ui.format import tokens
    from tower.ui.screens.detail import ThreadScreen

    async with tui(tmp_path, project(3_000, "at = 0.7"), files=FILES) as t:
        await t.until(lambda: t.state().threads and t.state().all_ended, "the thread ends")
        assert t.view("t").state is ThreadState.DONE and t.view("t").compactions >= 1
        assert t.threads.current == "t"
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == "t"
        log = screen.query_one(RichLog)

        def transcript() -> str:
            return "\n".join(strip.text for strip in log.lines)

        await t.until(lambda: "finish" in transcript(), "the transcript")
        folds = [e.payload for e in await t.events("t") if e.kind is EventKind.COMPACTED]
        heads = [ln for ln in transcript().splitlines() if "── compacted:" in ln]
        assert len(heads) == len(folds) == t.view("t").compactions
        for head, p in zip(heads, folds, strict=True):
            assert f"{len(p['folded'])} older tool result(s) elided" in head
            before, after = tokens(p["tokens_before"]), tokens(p["tokens_after"])
            assert f"prompt {before} → {after} of a {tokens(3_000)} window" in head
