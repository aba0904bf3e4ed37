"""Task graphs (`after`): a task is spawned once the tasks it names have ended, reads their
answers in its prompt and their files under after/<thread>/, and is skipped (recorded, with
the reason) when one of them did not finish well, unless it says after_policy = "any".
Graph mistakes are `tower check` errors naming the file and key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tower, write_project
from tower.core.events import EventKind, ThreadState
from tower.core.payloads import ThreadSpawned, payload_as
from tower.core.project import ProjectError, load_project
from tower.core.session import run_headless
from tower.core.store import Store

HEAD = """
[project]
name = "graph"
seed = 1
retry_backoff_s = 0
max_retries = 0

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["read_file", "write_file", "list_dir", "finish"]
"""

SCREEN = """
[[tasks]]
id = "screen"
agent = "a"
repeat = 3
prompt = "screen slice {n}"
workspace = "ws"

[[tasks.script]]
tool = "write_file"
args = { path = "finding.txt", content = "slice {n}: up" }

[[tasks.script]]
tool = "finish"
args = { answer = "slice {n} is up" }
"""

DIGEST = """
[[tasks]]
id = "digest"
agent = "a"
after = ["screen-*"]
prompt = "Write the digest of:\\n{after.answers}\\nfirst: {after.screen-1.answer}"
workspace = "ws"

[[tasks.script]]
tool = "read_file"
args = { path = "after/screen-2/finding.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "digest of three slices" }
"""

FAILING = """
[[tasks]]
id = "fragile"
agent = "a"
prompt = "fail"
workspace = "ws"

[[tasks.script]]
fault = "server_error"
"""

AFTER_FRAGILE = """
[[tasks]]
id = "needs"
agent = "a"
after = ["fragile", "screen"]
prompt = "go on"
workspace = "ws"

[[tasks.script]]
tool = "finish"
args = { answer = "went on" }
"""


async def _run(tmp_path: Path, toml: str) -> tuple[dict, list]:
    root = write_project(tmp_path / "proj", toml, {"ws/readme.txt": "data"})
    db = tmp_path / "t.db"
    result = await run_headless(load_project(root), db, "all")
    store = await Store.open(db)
    try:
        (row,) = await store.list_sessions()
        events = [ev async for ev in store.events(row.id)]
    finally:
        await store.close()
    return result.state.threads, events


async def test_a_digest_runs_after_its_screens_and_reads_their_answers_and_files(
    tmp_path: Path,
) -> None:
    threads, events = await _run(tmp_path, HEAD + SCREEN + DIGEST)
    assert {t: v.state for t, v in threads.items()} == {
        "screen-1": ThreadState.DONE,
        "screen-2": ThreadState.DONE,
        "screen-3": ThreadState.DONE,
        "digest": ThreadState.DONE,
    }
    spawned = {e.thread: (e.seq, e) for e in events if e.kind is EventKind.THREAD_SPAWNED}
    last_screen_end = max(
        e.seq
        for e in events
        if e.kind is EventKind.THREAD_STATE
        and e.thread.startswith("screen")
        and e.payload["state"] == "done"
    )
    assert spawned["digest"][0] > last_screen_end  # spawned only once every screen ended
    digest = payload_as(spawned["digest"][1], ThreadSpawned)
    assert digest.after == ["screen-1", "screen-2", "screen-3"]  # the graph edge is logged
    assert digest.prompt == (
        "Write the digest of:\n- screen-1: slice 1 is up\n- screen-2: slice 2 is up\n"
        "- screen-3: slice 3 is up\nfirst: slice 1 is up"
    )
    read = [
        e.payload["result"]
        for e in events
        if e.kind is EventKind.TOOL_RESULT
        and e.thread == "digest"
        and e.payload["tool"] == "read_file"
    ]
    assert read == ["slice 2: up"]  # screen-2's own file, under after/screen-2/


async def test_a_failed_dependency_skips_its_dependents_with_the_reason(tmp_path: Path) -> None:
    threads, events = await _run(tmp_path, HEAD + SCREEN + FAILING + AFTER_FRAGILE)
    assert threads["fragile"].state is ThreadState.FAILED
    needs = threads["needs"]
    assert needs.state is ThreadState.SKIPPED
    assert needs.reason == "skipped: fragile failed"
    assert needs.step == 0  # it never called its model
    assert not [e for e in events if e.kind is EventKind.LLM_STARTED and e.thread == "needs"]


async def test_after_policy_any_runs_whatever_the_outcome(tmp_path: Path) -> None:
    toml = (
        HEAD
        + SCREEN
        + FAILING
        + AFTER_FRAGILE.replace(
            'after = ["fragile", "screen"]', 'after = ["fragile", "screen"]\nafter_policy = "any"'
        )
    )
    threads, _ = await _run(tmp_path, toml)
    assert threads["fragile"].state is ThreadState.FAILED
    assert threads["needs"].state is ThreadState.DONE and threads["needs"].answer == "went on"


@pytest.mark.parametrize(
    ("tasks", "problem"),
    [
        (
            SCREEN + DIGEST.replace('"screen-*"', '"sreen"'),
            "tasks[1].after[0]: 'sreen' names no task (did you mean 'screen'?",
        ),
        (SCREEN + DIGEST.replace('"screen-*"', '"digest"'), "cannot wait for itself"),
        (
            SCREEN.replace('workspace = "ws"', 'workspace = "ws"\nafter = ["digest"]') + DIGEST,
            "tasks[0].after: a cycle, screen → digest → screen",
        ),
        (
            SCREEN + DIGEST.replace("{after.screen-1.answer}", "{after.other.answer}"),
            "tasks[1].prompt: {after.other.answer} names 'other'",
        ),
    ],
    ids=["unknown", "itself", "cycle", "unknown-answer"],
)
def test_graph_mistakes_are_check_errors_naming_file_and_key(
    tmp_path: Path, tasks: str, problem: str
) -> None:
    root = write_project(tmp_path / "proj", HEAD + tasks, {"ws/readme.txt": "data"})
    with pytest.raises(ProjectError) as info:
        load_project(root)
    assert any(problem in p for p in info.value.problems), info.value.problems
    assert all(str(root / "tower.toml") in p for p in info.value.problems)
    checked = tower("check", str(root))
    assert checked.returncode == 2
    assert problem in checked.stderr and "Traceback" not in checked.stderr


def test_headless_json_counts_skipped_threads(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", HEAD + SCREEN + FAILING + AFTER_FRAGILE, {"ws/r": "x"})
    out = tower("run", str(root), "--headless", "--approve", "all", "--json")
    summary = json.loads(out.stdout)
    assert summary["threads"] == {"done": 3, "failed": 1, "killed": 0, "skipped": 1}


async def test_a_crash_anywhere_in_a_graph_resumes_to_the_same_outcome(tmp_path: Path) -> None:
    """The log cut after every event in turn: each cut resumes to the uninterrupted
    answers; the digest is spawned once, after its screens, with the same prompt."""
    from tests.functional.test_resume import _crashed_copy
    from tower.core.session import resume_headless

    root = write_project(tmp_path / "proj", HEAD + SCREEN + DIGEST, {"ws/readme.txt": "data"})
    ref = await run_headless(load_project(root), tmp_path / "ref.db", "all", None)
    session = ref.summary["session"]
    store = await Store.open(tmp_path / "ref.db")
    events = [ev async for ev in store.events(session)]
    await store.close()
    answers = {t: v.answer for t, v in ref.state.threads.items()}
    prompt = next(
        payload_as(e, ThreadSpawned).prompt
        for e in events
        if e.kind is EventKind.THREAD_SPAWNED and e.thread == "digest"
    )
    ends = [i for i, ev in enumerate(events) if ev.kind is EventKind.SESSION_ENDED]
    for k in range(1, ends[0]):
        db = await _crashed_copy(tmp_path / f"cut{k}.db", session, "graph", root, events[:k])
        result = await resume_headless(db, session, "all", None)
        got = {t: v.answer for t, v in result.state.threads.items()}
        assert got == answers, (k, got)
        store = await Store.open(db)
        after = [ev async for ev in store.events(session)]
        await store.close()
        spawned = [e for e in after if e.kind is EventKind.THREAD_SPAWNED]
        digests = [payload_as(e, ThreadSpawned).prompt for e in spawned if e.thread == "digest"]
        assert digests == [prompt], k


DIGEST_OF_T = """
[[tasks]]
id = "digest"
agent = "b"
after = ["t"]
prompt = "digest of:\\n{after.answers}"

[[tasks.script]]
tool = "finish"
args = { answer = "digest done" }
"""


ASK_ONLY = """
[[tasks]]
id = "{id}"
agent = "{agent}"
prompt = "{prompt}"
repeat = {repeat}
workspace = "ws"

[[tasks.script]]
tool = "ask_human"
args = {{ question = "Which year?" }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "the year is known" }}
"""


async def test_the_screen_counts_a_waiting_task_and_lists_it_once_spawned(
    tmp_path: Path,
) -> None:
    """While its two dependencies wait for the person, the digest is not a thread yet: the
    budget bar says a task waits on others. Answering both (r, text, enter) ends them;
    the digest then appears in the list, runs, and the bar stops counting it."""
    from tests.tui_harness import drawn, project, task, tui, waiting_on
    from tower.core.events import InboxKind
    from tower.ui.screens.dialogs import TextDialog
    from tower.ui.widgets.budget import BudgetBar

    async with tui(tmp_path, project(task(ASK_ONLY, "t", repeat=2), DIGEST_OF_T)) as t:
        await t.ready(waiting_on(t, 2, InboxKind.QUESTION), "two questions")
        await t.settle()
        bar = t.app.query_one(BudgetBar)
        assert "1 task waiting on others" in drawn(bar)
        assert "digest" not in t.state().threads and not any("digest" in r for r in t.rows())
        for left in (1, 0):
            await t.press("]", "r")  # the next item that needs me, then reply
            dialog = await t.screen_is(TextDialog)
            dialog.query_one("Input").value = "2025"
            await t.press("enter")
            await t.until(lambda n=left: len(t.items()) == n, f"{left} question(s) left")
        await t.until(
            lambda: "digest" in t.state().threads and t.view("digest").state.ended, "digest"
        )
        await t.settle()
        assert t.view("digest").state is ThreadState.DONE
        assert any("digest" in r and "done" in r for r in t.rows())
        assert "waiting on others" not in drawn(bar)


async def test_a_graph_task_spawned_by_hand_gets_the_answers_there_are(live_factory) -> None:
    """`n` on the digest task: the person chose to start it now; its prompt has the
    answers of the screens that ended (the graph edge is recorded too)."""
    from tests.conftest import ended

    live = await live_factory(HEAD + SCREEN + DIGEST, {"ws/readme.txt": "data"}, approve="all")
    await live.waiter.until(ended(live, "screen-1", "screen-2", "screen-3", "digest"))
    tid = live.sup.spawn_task("digest")
    assert tid == "digest-2"
    (spawned,) = live.kinds(tid, EventKind.THREAD_SPAWNED)
    p = payload_as(spawned, ThreadSpawned)
    assert p.after == ["screen-1", "screen-2", "screen-3"]
    assert "- screen-2: slice 2 is up" in p.prompt and "{after" not in p.prompt
