"""Crash resume: kill -9 at random moments, then `tower resume` finishes every thread without
repeating or re-billing a recorded call; an interrupted side effect is never re-run silently."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, one_line_error, tower, tower_cmd, tower_env, write_project
from tower.core.events import Event, EventKind, ThreadState
from tower.core.payloads import PauseRequested, payload_as, payload_of
from tower.core.project import load_project
from tower.core.resume import rebuild
from tower.core.session import fold_recorded, resume_headless, run_headless
from tower.core.state import fold, state_to_dict
from tower.core.store import Store

TAX = str(REPO / "sample_projects" / "tax_return")


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT session, seq, thread, kind, payload FROM events ORDER BY session, seq"
        ).fetchall()


def session_status(db: Path) -> str:
    return json.loads(tower("sessions", "--db", str(db), "--json").stdout)[0]["status"]


def kill_after(db: Path, lines: int) -> bool:
    """Starts a headless run and SIGKILLs it after `lines` lines of output. False if it ended."""
    proc = subprocess.Popen(
        tower_cmd("run", TAX, "--headless", "--approve", "all", "--db", str(db)),
        env=tower_env(),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    seen = 0
    for _ in proc.stdout:
        seen += 1
        if seen >= lines:
            break
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    return seen >= lines


def calls_of(db: Path) -> dict[tuple[str, int], tuple[int, int]]:
    """(thread, step) -> (prompt tokens, completion tokens) of every recorded model call."""
    return {
        (r[2], p["step"]): (p["usage"]["prompt_tokens"], p["usage"]["completion_tokens"])
        for r in rows(db)
        if r[3] == EventKind.LLM_FINISHED and (p := json.loads(r[4]))
    }


def test_sigkill_at_random_moments_then_resume(tmp_path) -> None:
    rng = random.Random(20261122)
    killed = resumed = 0
    # An uninterrupted run: the sim is deterministic per step, so a faithful resume makes
    # exactly these calls, with exactly these prompts (same messages, same workspace).
    ref = tower("run", TAX, "--headless", "--approve", "all", "--db", str(tmp_path / "ref.db"))
    assert ref.returncode == 0, ref.stderr
    reference = calls_of(tmp_path / "ref.db")
    for i in range(20):
        db = tmp_path / f"k{i}.db"
        # Line 1 is the header; a full run prints about 42 lines: kill anywhere in between.
        if not kill_after(db, rng.randint(2, 38)):
            continue
        killed += 1
        before = rows(db)
        if not before:
            continue  # killed before the session row existed: nothing to resume
        seqs = [r[1] for r in before]
        assert seqs == list(range(1, len(seqs) + 1))  # every committed event is intact
        for r in before:
            json.loads(r[4])
        assert session_status(db) == "crashed"
        session = before[0][0][:13]
        proc = tower("resume", session, "--headless", "--approve", "all", "--json", "--db", str(db))
        if "no unfinished thread" in proc.stderr:
            continue  # killed after every thread had ended
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["threads"] == {"done": 5, "failed": 0, "killed": 0}
        after = rows(db)
        assert after[: len(before)] == before  # resume appends; history is untouched
        assert [r[1] for r in after] == list(range(1, len(after) + 1))
        finished = [(r[2], json.loads(r[4])) for r in after if r[3] == EventKind.LLM_FINISHED]
        per_step = collections.Counter((thread, p["step"]) for thread, p in finished)
        assert max(per_step.values()) == 1  # no recorded call was made (or billed) again
        assert out["cost_usd"] == round(sum(p["cost_usd"] for _, p in finished), 6)
        assert calls_of(db) == reference  # the resumed threads saw what they would have seen
        assert session_status(db) == "clean"
        resumed += 1
    assert killed >= 15 and resumed >= 12


async def _crashed_copy(
    db: Path, session: str, project: str, root: Path, events: list[Event]
) -> Path:
    """A database holding `events` of `session` as a crashed process left them."""
    out = await Store.open(db)
    started = events[0].ts if events else 0.0
    await out.create_session(session, project, str(root), started, {})
    out.start_writer(session)
    for ev in events:
        out.append(Event(ev.seq, ev.ts, ev.kind, ev.thread, ev.payload))
    await out.flush()
    await out.close()
    with sqlite3.connect(db) as conn:  # the process that wrote it is gone
        conn.execute("UPDATE sessions SET pid = 999999999")
    return db


async def _cut_after_approved_write(src: Path, dst: Path) -> str:
    """A copy of a finished session, cut right after a write_file was approved: as if tower
    died between the decision and the write."""
    store = await Store.open(src)
    session = (await store.list_sessions())[0].id
    events = [ev async for ev in store.events(session)]
    await store.close()
    approved = next(
        ev.payload["item"]
        for ev in events
        if ev.kind is EventKind.INBOX_CLOSED and ev.payload["resolution"] == "approved"
    )
    opened = next(
        ev for ev in events if ev.kind is EventKind.INBOX_OPENED and ev.payload["item"] == approved
    )
    call_id = opened.payload["call_id"]
    cut = next(
        i
        for i, ev in enumerate(events)
        if ev.kind is EventKind.TOOL_RESULT and ev.payload["call_id"] == call_id
    )
    await _crashed_copy(dst, session, "w", src.parent / "proj", events[:cut])
    return call_id


WRITER = """
[project]
name = "w"
[policy]
ask = ["write_file"]
[[agents]]
name = "a"
cascade = ["sim/instant"]
[[tasks]]
id = "t"
agent = "a"
prompt = "write it"
workspace = "ws"
[[tasks.script]]
say = "Writing."
tool = "write_file"
args = { path = "out.txt", content = "once" }
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


@pytest.mark.parametrize("approve", ["none", "all"])
async def test_an_interrupted_write_asks_before_running_again(tmp_path, approve) -> None:
    root = write_project(tmp_path / "proj", WRITER, {"ws/readme.txt": "x"})
    first = await run_headless(load_project(root), tmp_path / "a.db", "all")
    assert first.summary["threads"]["done"] == 1
    call_id = await _cut_after_approved_write(tmp_path / "a.db", tmp_path / "b.db")
    result = await resume_headless(tmp_path / "b.db", first.summary["session"], approve)
    store = await Store.open(tmp_path / "b.db")
    events = [ev async for ev in store.events(first.summary["session"])]
    await store.close()
    resumed_at = next(i for i, ev in enumerate(events) if ev.kind is EventKind.SESSION_RESUMED)
    asked = [ev for ev in events[resumed_at:] if ev.kind is EventKind.INBOX_OPENED]
    assert len(asked) == 1 and asked[0].payload["interrupted"] is True
    assert asked[0].payload["call_id"] == call_id and "run again" in asked[0].payload["reason"]
    writes = [
        ev
        for ev in events[resumed_at:]
        if ev.kind is EventKind.TOOL_RESULT and ev.payload["tool"] == "write_file"
    ]
    assert len(writes) == 1
    assert writes[0].payload["ok"] is (approve == "all")
    assert result.summary["threads"]["done"] == 1
    # The model call that asked for the write is not made again.
    assert (
        sum(1 for ev in events if ev.kind is EventKind.LLM_FINISHED and ev.payload["step"] == 1)
        == 1
    )


async def test_resume_refuses_a_finished_session(tmp_path) -> None:
    root = write_project(tmp_path / "proj", WRITER, {"ws/readme.txt": "x"})
    first = await run_headless(load_project(root), tmp_path / "a.db", "all")
    from tower.core.session import ResumeError

    with pytest.raises(ResumeError, match="no unfinished thread"):
        await resume_headless(tmp_path / "a.db", first.summary["session"], "all")


def test_resume_cli_errors_are_one_line(tmp_path) -> None:
    one_line_error(tower("resume", "nope", "--headless", "--db", str(tmp_path / "missing.db")))


async def test_fork_reuses_recorded_calls_and_runs_live_on_another_model(tmp_path) -> None:
    from tower.core.session import fork_headless

    db = tmp_path / "t.db"
    original = await run_headless(load_project(REPO / "sample_projects" / "code_review"), db, "all")
    store = await Store.open(db)
    source = [ev async for ev in store.events(original.summary["session"])]
    await store.close()
    finished = [ev for ev in source if ev.kind is EventKind.LLM_FINISHED]
    at = finished[5].seq  # mid-run: some threads have recorded calls, none has ended
    fork = await fork_headless(db, original.summary["session"], at, "all", model="sim/large")
    assert fork.summary["session"] != original.summary["session"]
    store = await Store.open(db)
    forked = [ev async for ev in store.events(fork.summary["session"])]
    await store.close()
    # The history up to SEQ is the original's, event for event.
    for a, b in zip(source[:at], forked[:at], strict=True):
        assert (a.seq, a.kind, a.thread) == (b.seq, b.kind, b.thread)
        if a.kind is not EventKind.SESSION_STARTED:
            assert a.payload == b.payload
    # Nothing before SEQ is called again, and everything after it runs on the new model.
    before = {(ev.thread, ev.payload["step"]) for ev in finished if ev.seq <= at}
    later = [ev for ev in forked[at:] if ev.kind is EventKind.LLM_FINISHED]
    assert later and not before & {(ev.thread, ev.payload["step"]) for ev in later}
    # Every thread unfinished at SEQ runs on the new model; threads spawned after it (the
    # lead reviewer's sub-agents) run on their own template's cascade.
    at_fork = {ev.thread for ev in forked[:at] if ev.kind is EventKind.THREAD_SPAWNED}
    assert {ev.payload["model"] for ev in later if ev.thread in at_fork} == {"sim/large"}
    resumed = next(ev for ev in forked if ev.kind is EventKind.SESSION_RESUMED)
    assert resumed.payload["forked_from"] == original.summary["session"]
    assert resumed.payload["at"] == at
    assert fork.summary["threads"]["done"] == original.summary["threads"]["done"]
    recorded_cost = sum(ev.payload["cost_usd"] for ev in finished if ev.seq <= at)
    fork_cost_before = sum(
        ev.payload["cost_usd"] for ev in forked[:at] if ev.kind is EventKind.LLM_FINISHED
    )
    assert fork_cost_before == recorded_cost


async def test_a_call_cut_off_by_a_crash_is_booked_as_possibly_billed(tmp_path) -> None:
    """Resume finds a call started but never finished: the provider may have served and
    billed it, so its reservation is booked apart ("possibly billed"), counts against the
    cap, and shows in the summary, the sessions list and the CSV export."""
    import csv
    import io

    from tower.core.replay import export_csv

    root = tmp_path / "proj"
    root.mkdir()
    (root / "tower.toml").write_text(WRITER.replace('ask = ["write_file"]', "ask = []"))
    (root / "ws").mkdir()
    ref = tmp_path / "ref.db"
    done = await run_headless(load_project(root), ref, "all", None)
    session = done.summary["session"]
    store = await Store.open(ref)
    events = [ev async for ev in store.events(session)]
    await store.close()
    # Cut right after the second call started: as if tower died while it streamed.
    starts = [i for i, ev in enumerate(events) if ev.kind is EventKind.LLM_STARTED]
    cut = starts[1] + 1
    reserved = events[starts[1]].payload["reserved_usd"]
    cut_db = await _crashed_copy(tmp_path / "cut.db", session, "w", root, events[:cut])

    result = await resume_headless(cut_db, session, "all", None)
    assert result.summary["threads"]["done"] == 1
    assert result.summary["lost_usd"] == pytest.approx(reserved, abs=1e-6)
    store = await Store.open(cut_db)
    try:
        after = [ev async for ev in store.events(session)]
        (lost,) = [ev for ev in after if ev.kind is EventKind.LLM_LOST]
        assert payload_of(lost).reserved_usd == pytest.approx(reserved) and lost.thread == "t"
        (row,) = await store.list_sessions()
        assert row.lost_usd == pytest.approx(reserved)
        text = io.StringIO()
        await export_csv(store, session, text)
        (line,) = list(csv.DictReader(io.StringIO(text.getvalue())))
        assert float(line["lost_usd"]) == pytest.approx(reserved)
        # The known cost is what the provider reported; the lost call is apart from it.
        known = sum(ev.payload["cost_usd"] for ev in after if ev.kind is EventKind.LLM_FINISHED)
        assert result.summary["cost_usd"] == pytest.approx(known, abs=1e-6)
    finally:
        await store.close()


THREE_TASKS = """
[project]
name = "cuts"
[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["list_dir", "finish"]
[[tasks]]
id = "t"
agent = "a"
prompt = "look"
repeat = 3
workspace = "ws"
[[tasks.script]]
say = "Looking."
tool = "list_dir"
[[tasks.script]]
tool = "finish"
args = { answer = "saw {n}" }
"""


async def test_a_crash_at_every_event_boundary_resumes_to_the_uninterrupted_outcome(
    tmp_path,
) -> None:
    """The log of an uninterrupted run, cut after every event in turn (and before the first,
    right after the session row was made): each cut resumes to the same outcome, every
    task runs (those never spawned are spawned), no recorded call is made twice."""
    root = write_project(tmp_path / "proj", THREE_TASKS, {"ws/a.txt": "a\n"})
    ref = await run_headless(load_project(root), tmp_path / "ref.db", "all", None)
    session = ref.summary["session"]
    store = await Store.open(tmp_path / "ref.db")
    events = [ev async for ev in store.events(session)]
    await store.close()
    answers = {t: v.answer for t, v in ref.state.threads.items()}
    assert answers == {"t-1": "saw 1", "t-2": "saw 2", "t-3": "saw 3"}
    ends = [i for i, ev in enumerate(events) if ev.kind is EventKind.SESSION_ENDED]
    for k in range(ends[0] if ends else len(events)):
        db = await _crashed_copy(tmp_path / f"cut{k}.db", session, "cuts", root, events[:k])
        result = await resume_headless(db, session, "all", None)
        got = {t: v.answer for t, v in result.state.threads.items()}
        assert got == answers, (k, got)
        assert result.summary["threads"] == {"done": 3, "failed": 0, "killed": 0}, k
        store = await Store.open(db)
        after = [ev async for ev in store.events(session)]
        await store.close()
        assert [e.seq for e in after] == list(range(1, len(after) + 1)), k
        assert [e.to_dict() for e in after[:k]] == [e.to_dict() for e in events[:k]]
        calls = collections.Counter(
            (e.thread, e.payload["step"]) for e in after if e.kind is EventKind.LLM_FINISHED
        )
        assert max(calls.values()) == 1, (k, calls)  # no recorded call made again
        spawned = [e.thread for e in after if e.kind is EventKind.THREAD_SPAWNED]
        assert sorted(spawned) == ["t-1", "t-2", "t-3"], (k, spawned)


async def test_a_resume_folds_the_log_in_one_pass_and_keeps_only_open_threads(tmp_path) -> None:
    """The resume's fold streams the log: the state it builds is the reducer's over the whole
    log, and the working set it keeps is that of the threads still open at the cut (an ended
    thread's is dropped as it ends), so a long log does not sit in memory twice."""
    root = write_project(tmp_path / "proj", THREE_TASKS, {"ws/a.txt": "a\n"})
    ref = await run_headless(load_project(root), tmp_path / "ref.db", "all", None)
    session = ref.summary["session"]
    store = await Store.open(tmp_path / "ref.db")
    events = [ev async for ev in store.events(session)]
    await store.close()
    prompts = {a.name: a.system_prompt for a in load_project(root).agents}
    first_end = next(
        i for i, ev in enumerate(events)
        if ev.kind is EventKind.THREAD_STATE and ev.payload["state"] == "done"
    )  # fmt: skip
    checked = 0
    for k in (first_end + 1, len(events)):
        db = await _crashed_copy(tmp_path / f"fold{k}.db", session, "folds", root, events[:k])
        copy = await Store.open(db)
        try:
            state, log = await fold_recorded(copy, session, prompts)
        finally:
            await copy.close()
        assert state_to_dict(state) == state_to_dict(fold(events[:k]))
        open_threads = sorted(t for t, v in state.threads.items() if not v.state.ended)
        assert sorted(log.rebuilder.plans) == open_threads
        assert sorted(log.rebuilder.last_calls) == open_threads  # ended ones' sets dropped
        assert log.rebuilder.ended == {t for t, v in state.threads.items() if v.state.ended}
        plans = log.plans()
        assert [p.id for p in plans] == [p.id for p in rebuild(events[:k], prompts)]
        assert log.started and log.spawn_tasks
        assert log.last_call == max(
            int(e.payload["call"][1:]) for e in events[:k] if e.kind is EventKind.LLM_STARTED
        )
        checked += 1
    assert checked == 2
    assert log.rebuilder.ended == {"t-1", "t-2", "t-3"} and not log.rebuilder.plans


TEXT_ANSWER = """
[[tasks]]
id = "t"
agent = "a"
prompt = "What is right?"
[tasks.check]
answer_contains = ["right"]
[[tasks.script]]
say = "It is wrong."
"""


async def test_resume_sends_the_model_the_conversation_the_live_loop_sent(live_factory) -> None:
    """A text answer failed its check: the live loop told the model why (a user message).
    The conversation a resume rebuilds from the log, cut anywhere, is the live one up to
    that point, that note included (both are the same fold of the thread's events)."""
    from tests.conftest import ended
    from tests.functional.test_escalation import project
    from tower.core.check import CHECK_FAILED
    from tower.core.resume import rebuild

    live = await live_factory(project(TEXT_ANSWER), approve="all")
    await live.waiter.until(ended(live, "t"))
    sent = live.sent("t")
    notes = [m for m in sent if str(m.get("content") or "").startswith(CHECK_FAILED)]
    assert notes and all(m["role"] == "user" for m in notes)
    await live.store.flush()
    events = [ev async for ev in live.store.events(live.sup.session_id)]
    prompts = {a.name: a.system_prompt for a in live.project.agents}
    checked = [i for i, ev in enumerate(events) if ev.kind is EventKind.CHECKED]
    compared = 0
    for cut in (checked[0] + 1, len(events) - 1):
        ended_at = next(
            (i for i, ev in enumerate(events[:cut]) if ev.kind is EventKind.THREAD_STATE
             and ev.payload["state"] in ("done", "failed")),
            None,
        )  # fmt: skip
        if ended_at is not None:
            continue  # an ended thread is not resumed
        (plan,) = rebuild(events[:cut], prompts)
        rebuilt = plan.conversation.messages
        assert rebuilt == sent[: len(rebuilt)], cut
        assert any(str(m.get("content") or "").startswith(CHECK_FAILED) for m in rebuilt)
        compared += 1
    assert compared >= 1  # the cut after the failed check, at least, was resumable


PAUSED = """
[project]
name = "p"
[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["list_dir", "finish"]
[[tasks]]
id = "t"
agent = "a"
prompt = "look"
workspace = "ws"
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def _paused_then_quit(tmp_path: Path) -> tuple[Path, str]:
    """A session whose one thread the person paused before quitting (pause is in the log)."""
    from tower.core.session import SessionRuntime

    root = write_project(tmp_path / "proj", PAUSED, {"ws/a.txt": "a"})
    db = tmp_path / "t.db"
    runtime = await SessionRuntime.open(db, load_project(root))
    await runtime.start()
    runtime.sup.pause("t")
    assert runtime.state.threads["t"].pause_requested
    session = runtime.session_id
    await runtime.close("quit")
    return db, session


async def test_a_headless_resume_lifts_a_pause_nobody_could_lift(tmp_path) -> None:
    """Headless, nobody can press p again: the resumed thread runs (it hung before)."""
    db, session = await _paused_then_quit(tmp_path)
    result = await asyncio.wait_for(resume_headless(db, session, "all"), 60)
    view = result.state.threads["t"]
    assert view.state is ThreadState.DONE and not view.pause_requested
    store = await Store.open(db)
    try:
        asked = [
            payload_as(e, PauseRequested).requested
            for e in [ev async for ev in store.events(session)]
            if e.kind is EventKind.PAUSE_REQUESTED
        ]
    finally:
        await store.close()
    assert asked == [True, False]  # the lift is recorded, not silent


async def test_a_resume_with_a_person_keeps_the_pause_and_says_so(tmp_path) -> None:
    """With a person (no --approve), the paused thread is shown paused, and waits for them."""
    from tower.core.session import SessionRuntime

    db, session = await _paused_then_quit(tmp_path)
    runtime = await SessionRuntime.open(db, resume=session)
    try:
        await runtime.start()
        view = runtime.state.threads["t"]
        assert view.pause_requested
        assert (view.state, view.reason) == (ThreadState.PAUSED, "paused by the human")
        runtime.sup.resume("t")
        await asyncio.wait_for(runtime.sup.wait_idle(), 60)
        assert runtime.state.threads["t"].state is ThreadState.DONE
    finally:
        await runtime.close()
