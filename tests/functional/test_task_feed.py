"""A large project's tasks are fed as slots free (issue 15): no more than FEED_AHEAD copies
wait as threads at any moment, every copy still runs exactly once, priority still decides
who starts, views count the copies not yet started, and a crash mid-feed resumes without
running or losing any."""

from __future__ import annotations

import collections
import sqlite3
from pathlib import Path

from tests.functional.test_resume import _crashed_copy
from tests.helpers import db_events, write_project
from tower.core.events import Event, EventKind, ThreadState
from tower.core.project import load_project
from tower.core.session import resume_headless, run_headless
from tower.core.state import TowerState, apply
from tower.core.tasks import FEED_AHEAD

CAP = 8
MANY = 2_500

TOML = """
[project]
name = "feed"
seed = 1

[limits]
max_concurrent = {cap}

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]

[[tasks]]
id = "bulk"
agent = "a"
prompt = "item {{n}}"
repeat = {many}

[[tasks.script]]
tool = "finish"
args = {{ answer = "done {{n}}" }}
{urgent}
"""

URGENT = """
[[tasks]]
id = "urgent"
agent = "a"
prompt = "urgent {n}"
priority = 5
repeat = 10

[[tasks.script]]
tool = "finish"
args = { answer = "first" }
"""


def _project(tmp: Path, urgent: bool = False) -> Path:
    toml = TOML.format(cap=CAP, many=MANY, urgent=URGENT if urgent else "")
    return write_project(tmp / "proj", toml, {})


def _live_threads_at_most(events: list[Event]) -> int:
    """The most threads spawned and not yet ended at any moment of the log."""
    live = most = 0
    for ev in events:
        if ev.kind is EventKind.THREAD_SPAWNED:
            live += 1
            most = max(most, live)
        elif ev.kind is EventKind.THREAD_STATE and ThreadState(ev.payload["state"]).ended:
            live -= 1
    return most


async def test_a_large_project_is_fed_as_slots_free_and_every_copy_runs_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    result = await run_headless(load_project(_project(tmp_path)), db, "none")
    events = db_events(db)
    spawned = collections.Counter(e.thread for e in events if e.kind is EventKind.THREAD_SPAWNED)
    assert len(spawned) == MANY and set(spawned.values()) == {1}
    assert set(spawned) == {f"bulk-{n}" for n in range(1, MANY + 1)}
    assert result.state.count(ThreadState.DONE) == MANY
    # Never the whole project as threads at once: the queue ahead, plus what runs.
    assert _live_threads_at_most(events) <= FEED_AHEAD + CAP
    # Views count what is not started yet, from the log alone.
    state = TowerState()
    seen_unstarted = set()
    for ev in events:
        apply(state, ev)
        if ev.kind is EventKind.THREAD_SPAWNED:
            seen_unstarted.add(state.tasks_unstarted)
    assert state.tasks_planned == MANY and state.tasks_spawned == MANY
    assert state.tasks_unstarted == 0
    assert MANY - FEED_AHEAD in seen_unstarted  # right after the first batch


async def test_priority_still_decides_who_starts_when_the_project_is_fed(
    tmp_path: Path,
) -> None:
    """The urgent task comes last in tower.toml; fed in project order, its copies would
    wait behind a thousand bulk ones. They start first."""
    db = tmp_path / "t.db"
    await run_headless(load_project(_project(tmp_path, urgent=True)), db, "none")
    started = [
        e.thread
        for e in db_events(db)
        if e.kind is EventKind.THREAD_STATE and e.payload["state"] == "running"
    ]
    assert all(t.startswith("urgent-") for t in started[:CAP]), started[: CAP + 2]


async def test_a_crash_mid_feed_resumes_without_running_or_losing_a_copy(
    tmp_path: Path,
) -> None:
    db = tmp_path / "t.db"
    project = load_project(_project(tmp_path))
    await run_headless(project, db, "none")
    events = db_events(db)
    session = events[0].payload["session"]
    # Cut where about half the copies were threads: the feed was mid-way.
    spawned = 0
    cut = 0
    for i, ev in enumerate(events):
        spawned += ev.kind is EventKind.THREAD_SPAWNED
        if spawned > MANY // 2:
            cut = i
            break
    crashed = await _crashed_copy(
        tmp_path / "crashed.db", session, project.name, project.root, events[:cut]
    )
    result = await resume_headless(crashed, session, "none")
    after = db_events(crashed)
    per_thread = collections.Counter(e.thread for e in after if e.kind is EventKind.THREAD_SPAWNED)
    assert len(per_thread) == MANY and set(per_thread.values()) == {1}
    finished = collections.Counter(
        (e.thread, e.payload["step"]) for e in after if e.kind is EventKind.LLM_FINISHED
    )
    assert set(finished.values()) == {1}  # no call made (or billed) twice
    assert result.state.count(ThreadState.DONE) == MANY
    with sqlite3.connect(crashed) as conn:
        (status,) = conn.execute("SELECT status FROM sessions").fetchone()
    assert status == "clean"


async def test_a_task_spawned_by_hand_mid_feed_takes_a_number_of_its_own(
    tmp_path: Path,
) -> None:
    """While copies are still to be fed, spawning the task by hand must not take the
    number of a copy the feed will spawn (that copy would run twice, or be lost)."""
    from tower.core.session import SessionRuntime

    project = load_project(_project(tmp_path))
    runtime = await SessionRuntime.open(tmp_path / "t.db", project, check=True)
    try:
        await runtime.start()
        by_hand = runtime.sup.spawn_task("bulk")
        assert by_hand == f"bulk-{MANY + 1}"
        await runtime.sup.wait_idle()
        threads = runtime.state.threads
        assert len(threads) == MANY + 1
        assert all(threads[f"bulk-{n}"].state is ThreadState.DONE for n in range(1, MANY + 2))
    finally:
        await runtime.close("quit")


ITEMS_TOML = """
[project]
name = "items"
seed = 1

[limits]
max_concurrent = 8

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]

[[tasks]]
id = "house"
agent = "a"
prompt = "What did {name} earn?"
items = "households.jsonl"

[[tasks.script]]
tool = "finish"
args = { answer = "{name} earned {wages}" }
"""


async def test_items_from_a_file_each_run_once_with_their_own_fields_across_a_crash(
    tmp_path: Path,
) -> None:
    """1,200 items fed from a JSONL file, a crash mid-way: every item's thread, resumed or
    not, answers with its own item's fields, and runs exactly once."""
    n = 1_200
    lines = "".join(f'{{"name": "h{k}", "wages": "${50_000 + k}"}}\n' for k in range(1, n + 1))
    root = write_project(tmp_path / "proj", ITEMS_TOML, {})
    (root / "households.jsonl").write_text(lines, encoding="utf-8")
    project = load_project(root)
    db = tmp_path / "t.db"
    await run_headless(project, db, "none")
    events = db_events(db)
    session = events[0].payload["session"]
    # Cut with calls in flight (started, not finished) half-way through the feed.
    open_calls: set[str] = set()
    cut = 0
    for i, ev in enumerate(events):
        if ev.kind is EventKind.LLM_STARTED:
            open_calls.add(ev.payload["call"])
        elif ev.kind is EventKind.LLM_FINISHED:
            open_calls.discard(ev.payload["call"])
        if i > len(events) // 2 and len(open_calls) >= 2:
            cut = i + 1
            break
    assert cut, "no moment with calls in flight"
    crashed = await _crashed_copy(
        tmp_path / "crashed.db", session, project.name, project.root, events[:cut]
    )
    in_flight = {e.thread for e in events[:cut] if e.payload.get("call") in open_calls}
    result = await resume_headless(crashed, session, "none")
    after = db_events(crashed)
    spawned = collections.Counter(e.thread for e in after if e.kind is EventKind.THREAD_SPAWNED)
    assert len(spawned) == n and set(spawned.values()) == {1}
    answers = {
        e.thread: e.payload.get("answer")
        for e in after
        if e.kind is EventKind.THREAD_STATE and e.payload["state"] == "done"
    }
    want = {f"house-{k}": f"h{k} earned ${50_000 + k}" for k in range(1, n + 1)}
    assert answers == want
    assert in_flight and all(answers[t] == want[t] for t in in_flight)  # resumed mid-call
    assert result.state.count(ThreadState.DONE) == n
