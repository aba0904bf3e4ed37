"""Replay and export read the log back: the state they fold is the live run's state, exactly."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from tests.helpers import REPO, one_line_error, tower
from tower.core.events import Event, EventKind
from tower.core.project import load_project
from tower.core.replay import events_from_jsonl, export_csv, state_at
from tower.core.session import RunResult, run_headless
from tower.core.state import fold, state_to_dict, summary
from tower.core.store import Store

SAMPLES = ["tax_return", "code_review", "market_analysis"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunResult, Path]]:
    """One live headless run of every sample project, each in its own database."""
    import asyncio

    out = {}
    for name in SAMPLES:
        db = tmp_path_factory.mktemp(name) / "t.db"
        project = load_project(REPO / "sample_projects" / name)
        out[name] = (asyncio.run(run_headless(project, db, "all")), db)
    return out


@pytest.mark.parametrize("name", SAMPLES)
def test_print_state_equals_the_live_summary_and_state(runs, name) -> None:
    result, db = runs[name]
    proc = tower("replay", result.summary["session"], "--db", str(db), "--print-state", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {k: out[k] for k in result.summary} == result.summary
    assert out["state"] == json.loads(json.dumps(state_to_dict(result.state)))
    assert out["at"] == result.summary["events"]


def test_a_unique_prefix_names_the_session(runs) -> None:
    result, db = runs["code_review"]
    prefix = result.summary["session"][:12]
    proc = tower("replay", prefix, "--db", str(db), "--print-state")
    assert proc.returncode == 0, proc.stderr
    done = result.summary["threads"]["done"]
    assert done > 0
    assert result.summary["session"] in proc.stdout and f"{done} done" in proc.stdout


async def test_seeking_to_random_events_equals_a_fold_from_scratch(runs) -> None:
    result, db = runs["tax_return"]
    session = result.summary["session"]
    store = await Store.open(db)
    try:
        events = [ev async for ev in store.events(session)]
        rng = random.Random(7)
        for at in [1, len(events), *rng.sample(range(1, len(events)), 15)]:
            seeked = await state_at(store, session, at)
            assert state_to_dict(seeked) == state_to_dict(fold(events[:at]))
            assert seeked.last_seq == at
    finally:
        await store.close()


def test_jsonl_export_round_trips_to_the_same_state(runs, tmp_path) -> None:
    result, db = runs["tax_return"]
    out = tmp_path / "events.jsonl"
    proc = tower(
        "export", result.summary["session"], "--db", str(db), "--format", "jsonl", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    rows = events_from_jsonl(out.read_text(encoding="utf-8"))
    assert len(rows) == result.summary["events"]
    events = [
        Event.from_row(r["seq"], r["ts"], r["kind"], r["thread"], json.dumps(r["payload"]))
        for r in rows
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert summary(fold(events)) == result.summary
    assert state_to_dict(fold(events)) == state_to_dict(result.state)


def test_csv_export_has_a_row_per_thread_with_cost_and_outcome(runs) -> None:
    result, db = runs["market_analysis"]
    proc = tower("export", result.summary["session"], "--db", str(db), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == len(result.state.threads)
    assert sum(float(r["cost_usd"]) for r in rows) == pytest.approx(
        result.summary["cost_usd"], abs=1e-6
    )
    outcomes = {r["outcome"] for r in rows}
    assert outcomes == {"done", "failed"}  # the budget stop
    for r in rows:
        view = result.state.threads[r["thread"]]
        assert r["outcome"] == view.state and int(r["tokens"]) == view.tokens
        assert int(r["steps"]) == view.step


async def test_csv_counts_human_minutes_per_thread(tmp_path) -> None:
    """An item a person decided after 90 s, spending 12 s on it: 1.5 minutes blocked and 0.2
    minutes of attention for that thread; a rule's decision counts neither."""
    store = await Store.open(tmp_path / "t.db")
    await store.create_session("s1", "p", "/p", 0.0, {})
    store.start_writer("s1")
    rows = [
        (0.0, EventKind.SESSION_STARTED, None, {"session": "s1", "project": "p"}),
        *[
            (
                1.0,
                EventKind.THREAD_SPAWNED,
                t,
                {
                    "agent": "a",
                    "task": t,
                    "title": t,
                    "cascade": ["sim/small"],
                    "model": "sim/small",
                    "priority": 0,
                },
            )
            for t in ("t1", "t2")
        ],
        (10.0, EventKind.INBOX_OPENED, "t1", {"item": "i1", "kind": "approval"}),
        (10.0, EventKind.INBOX_OPENED, "t2", {"item": "i2", "kind": "approval"}),
        (
            100.0,
            EventKind.INBOX_CLOSED,
            "t1",
            {"item": "i1", "resolution": "approved", "by": "human", "attention_s": 12.0},
        ),
        (
            100.0,
            EventKind.INBOX_CLOSED,
            "t2",
            {"item": "i2", "resolution": "approved", "by": "rule:--approve all"},
        ),
    ]
    for seq, (ts, kind, thread, payload) in enumerate(rows, 1):
        store.append(Event(seq, ts, kind, thread, payload))
    await store.end_session("s1")
    out = io.StringIO()
    try:
        assert await export_csv(store, "s1", out) == 2
    finally:
        await store.close()
    rows_out = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert {r["thread"]: float(r["human_minutes"]) for r in rows_out} == {"t1": 0.2, "t2": 0.0}
    assert {r["thread"]: float(r["blocked_minutes"]) for r in rows_out} == {"t1": 1.5, "t2": 0.0}


def test_bad_input_is_one_line_and_exit_2(runs, tmp_path) -> None:
    result, db = runs["code_review"]
    session = result.summary["session"]
    one_line_error(tower("replay", "nope", "--db", str(db), "--print-state"), "no session 'nope'")
    one_line_error(
        tower("replay", session, "--db", str(db), "--print-state", "--at", "99999"), "past the end"
    )
    one_line_error(
        tower("replay", session, "--db", str(tmp_path / "missing.db"), "--print-state"),
        "no database",
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(
        tower(
            "export", session, "--db", str(db), "--format", "csv", "--out", str(blocker / "out.csv")
        ),
        "cannot write",
    )
    one_line_error(tower("replay", session, "--db", str(db)), "--print-state")


async def test_seeking_from_snapshots_equals_a_fold_from_scratch(tmp_path, monkeypatch) -> None:
    from tower.core import bus

    monkeypatch.setattr(bus, "SNAPSHOT_EVERY", 50)
    db = tmp_path / "t.db"
    result = await run_headless(
        load_project(REPO / "sample_projects" / "market_analysis"), db, "none"
    )
    session = result.summary["session"]
    store = await Store.open(db)
    try:
        events = [ev async for ev in store.events(session)]
        snaps = [s async for s in _snapshot_seqs(store, session)]
        # One every 50 events, or every 4 per thread once threads outnumber that: all written.
        want, due, threads = [], 50, 0
        for ev in events:
            threads += ev.kind is EventKind.THREAD_SPAWNED
            if ev.seq >= due:
                want.append(ev.seq)
                due = ev.seq + bus.snapshot_gap(threads)
        assert len(want) > 3 and list(snaps) == want, (snaps, want)
        rng = random.Random(11)
        for at in [1, 50, 51, len(events), *rng.sample(range(1, len(events)), 25)]:
            seeked = await state_at(store, session, at)
            assert state_to_dict(seeked) == state_to_dict(fold(events[:at])), at
        assert summary(await state_at(store, session)) == result.summary
    finally:
        await store.close()


async def _snapshot_seqs(store: Store, session: str):
    async with store._conn.execute(
        "SELECT seq FROM snapshots WHERE session = ? ORDER BY seq", (session,)
    ) as cur:
        async for (seq,) in cur:
            yield seq


async def test_a_snapshot_of_another_state_shape_is_rebuilt_not_misread(tmp_path, monkeypatch):
    """Seeking reads a snapshot of the current shape (a marked one shows through), and
    ignores one written for another shape (an older release's), folding from the start."""
    import sqlite3
    import zlib

    from tower.core import bus
    from tower.core.state import STATE_VERSION

    monkeypatch.setattr(bus, "SNAPSHOT_EVERY", 20)
    db = tmp_path / "t.db"
    result = await run_headless(load_project(REPO / "sample_projects" / "tax_return"), db, "all")
    session = result.summary["session"]

    def mark(version: int | None) -> None:
        with sqlite3.connect(db) as conn:
            (blob,) = conn.execute(
                "SELECT state FROM snapshots WHERE session = ? AND seq = 40", (session,)
            ).fetchone()
            data = json.loads(zlib.decompress(blob))
            data["budget"]["spent_usd"] = 123.0  # a value no fold gives
            if version is None:
                del data["state_version"]  # as releases before versioned snapshots wrote
            else:
                data["state_version"] = version
            conn.execute(
                "UPDATE snapshots SET state = ? WHERE session = ? AND seq = 40",
                (zlib.compress(json.dumps(data).encode()), session),
            )

    store = await Store.open(db)
    try:
        events = [ev async for ev in store.events(session)]
        truth = state_to_dict(fold(events[:45]))
        with sqlite3.connect(db) as conn:
            written = [
                json.loads(zlib.decompress(b))
                for (b,) in conn.execute(
                    "SELECT state FROM snapshots WHERE session = ?", (session,)
                )
            ]
        assert written and {d["state_version"] for d in written} == {STATE_VERSION}
        mark(STATE_VERSION)
        assert (await state_at(store, session, 45)).budget.spent_usd >= 123.0  # it was read
        for other in (None, STATE_VERSION - 1, STATE_VERSION + 1):
            mark(other)
            assert state_to_dict(await state_at(store, session, 45)) == truth, other
    finally:
        await store.close()
