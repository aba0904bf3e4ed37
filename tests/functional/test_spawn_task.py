"""Spawning from a project task (`Supervisor.spawn_task`) and typed tasks with a workspace.

A thread spawned from a task keeps the task's id pattern (review-2, review-3...; a repeated
task's next copy screen-N+1 with {n} filled), workspace, script, answer, check, priority and
budget; a typed task may name a workspace folder, which must exist inside the project root.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import Live, ended
from tower.core.events import EventKind, ThreadState
from tower.core.supervisor import CommandError

LiveFactory = Callable[..., Awaitable[Live]]

PROJECT = """
[project]
name = "spawn"
seed = 3
retry_backoff_s = 0

[budget]
thread_usd = 1.0

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["read_file", "list_dir", "ask_human", "finish"]

[[tasks]]
id = "review"
agent = "a"
title = "Review the note"
prompt = "Read note.txt and say what it asks."
workspace = "ws"
priority = 3
budget_usd = 0.5
answer = "use 2025"

[tasks.check]
answer_contains = ["six times seven"]
file = "note.txt"

[[tasks.script]]
say = "Reading the note."
tool = "read_file"
args = { path = "note.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "the note asks six times seven" }

[[tasks]]
id = "screen"
agent = "a"
title = "Screen candidate {n}"
prompt = "Screen candidate {n}: read c{n}.txt."
workspace = "ws"
repeat = 2

[tasks.check]
answer_contains = ["screened"]

[[tasks.script]]
tool = "read_file"
args = { path = "c{n}.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "screened {n}" }
"""

FILES = {
    "ws/note.txt": "six times seven\n",
    "ws/c1.txt": "one\n",
    "ws/c2.txt": "two\n",
    "ws/c3.txt": "three\n",
    "ws/sub/inner.txt": "inner\n",
    "other/readme.txt": "other\n",
}


def spawned(live: Live, tid: str) -> dict:
    (ev,) = live.kinds(tid, EventKind.THREAD_SPAWNED)
    return ev.payload


def tools_called(live: Live, tid: str) -> list[tuple[str, dict]]:
    return [(e.payload["tool"], e.payload["args"]) for e in live.kinds(tid, EventKind.TOOL_CALLED)]


async def test_a_task_spawned_again_keeps_its_workspace_script_check_and_budget(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(PROJECT, FILES)
    await live.waiter.until(ended(live, "review", "screen-1", "screen-2"))
    sup = live.sup
    assert sup.task_copy("review").thread_id == "review-2"

    tid = sup.spawn_task("review")
    assert tid == "review-2"
    await live.waiter.until(ended(live, tid))
    view = live.view(tid)
    assert view.state is ThreadState.DONE, view.reason
    assert view.answer == "the note asks six times seven"
    assert view.title == "Review the note"
    assert view.priority == 3 and view.budget_usd == 0.5
    assert spawned(live, tid)["task"] == "review"
    run = sup.runs[tid]
    root = live.project.root
    assert run.workspace_src == root / "ws"
    assert run.workspace is not None and run.workspace.root != root / "ws"  # its own copy
    assert (run.workspace.root / "note.txt").read_text() == "six times seven\n"
    assert run.script == sup.runs["review"].script and run.default_answer == "use 2025"
    assert tools_called(live, tid) == [
        ("read_file", {"path": "note.txt"}),
        ("finish", {"answer": "the note asks six times seven"}),
    ]
    (check,) = live.kinds(tid, EventKind.CHECKED)
    assert check.payload["passed"] is True
    assert sup.check_of(run) is live.project.task("review").check

    # Once more, with the human's prompt and budget: the rest of the task stays.
    tid3 = sup.spawn_task("review", prompt="Just read the note.", budget_usd=0.2)
    assert tid3 == "review-3"
    await live.waiter.until(ended(live, tid3))
    payload = spawned(live, tid3)
    assert payload["prompt"] == "Just read the note." and payload["budget_usd"] == 0.2
    assert live.view(tid3).title == "Review the note"
    assert sup.runs[tid3].workspace_src == root / "ws"
    assert [t for t, _ in tools_called(live, tid3)] == ["read_file", "finish"]
    assert [e.payload["passed"] for e in live.kinds(tid3, EventKind.CHECKED)] == [True]


async def test_a_repeated_task_spawns_its_next_copy_with_n_filled(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(PROJECT, FILES)
    await live.waiter.until(ended(live, "review", "screen-1", "screen-2"))
    sup = live.sup
    copy = sup.task_copy("screen")
    assert (copy.thread_id, copy.n) == ("screen-3", 3)
    assert copy.prompt == "Screen candidate 3: read c3.txt."

    tid = sup.spawn_task("screen")
    assert tid == "screen-3"
    await live.waiter.until(ended(live, tid))
    view = live.view(tid)
    assert view.state is ThreadState.DONE, view.reason
    assert view.title == "Screen candidate 3" and view.answer == "screened 3"
    payload = spawned(live, tid)
    assert payload["prompt"] == "Screen candidate 3: read c3.txt."
    assert payload["task"] == "screen-3"
    assert sup.runs[tid].workspace_src == live.project.root / "ws"
    assert tools_called(live, tid)[0] == ("read_file", {"path": "c3.txt"})
    assert [e.payload["passed"] for e in live.kinds(tid, EventKind.CHECKED)] == [True]
    assert sup.task_copy("screen").thread_id == "screen-4"


async def test_without_the_project_threads_the_first_copy_takes_the_tasks_own_id(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(PROJECT, FILES, spawn_tasks=False)
    sup = live.sup
    assert sup.spawn_task("review") == "review"
    assert sup.spawn_task("screen") == "screen-1"
    assert sup.spawn_task("review") == "review-2"
    await live.waiter.until(ended(live, "review", "screen-1", "review-2"))
    for tid in ("review", "screen-1", "review-2"):
        assert live.view(tid).state is ThreadState.DONE, live.view(tid).reason
        assert [e.payload["passed"] for e in live.kinds(tid, EventKind.CHECKED)] == [True]
    with pytest.raises(CommandError, match="no task 'nope'"):
        sup.spawn_task("nope")


async def test_task_of_maps_spawned_copies_back_to_their_task(live_factory: LiveFactory) -> None:
    live = await live_factory(PROJECT, FILES, spawn_tasks=False)
    review, screen = live.project.task("review"), live.project.task("screen")
    task_of = live.sup._task_of
    assert task_of("review") == (review, None)
    assert task_of("review-2") == (review, None)
    assert task_of("screen-2") == (screen, 2)
    assert task_of("screen-7") == (screen, 7)  # a copy past `repeat`, spawned later
    assert task_of("screen") == (screen, None)
    assert task_of("other") is None and task_of("review-x") is None


async def test_a_typed_task_can_name_a_workspace_folder(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(PROJECT, FILES, spawn_tasks=False)
    tid = live.sup.spawn("a", "Look around the sub folder.", workspace="ws/sub")
    assert tid == "a"
    await live.waiter.until(ended(live, tid))
    run = live.sup.runs[tid]
    assert run.workspace_src == live.project.root / "ws" / "sub"
    assert run.workspace is not None
    assert (run.workspace.root / "inner.txt").read_text() == "inner\n"
    assert live.view(tid).state is ThreadState.DONE, live.view(tid).reason
    assert "inner.txt" in (live.view(tid).answer or "")
    assert live.kinds(tid, EventKind.CHECKED) == []  # a typed task has no check


@pytest.mark.parametrize(
    ("folder", "says"),
    [
        ("../outside", "not a folder inside the project"),
        ("ws/../../outside", "not a folder inside the project"),
        ("/tmp", "not a folder inside the project"),
        ("ws/escape", "not a folder inside the project"),  # a symlink out of the root
        ("missing", "no such folder"),
        ("ws/note.txt", "no such folder"),
        ("  ", "not a folder inside the project"),
    ],
)
async def test_a_workspace_outside_the_project_is_refused(
    live_factory: LiveFactory, tmp_path: Path, folder: str, says: str
) -> None:
    (tmp_path / "outside").mkdir()
    live = await live_factory(PROJECT, FILES, spawn_tasks=False)
    (live.project.root / "ws" / "escape").symlink_to(tmp_path / "outside")
    with pytest.raises(CommandError, match=says):
        live.sup.spawn("a", "Escape.", workspace=folder)
    assert live.sup.runs == {}
    assert live.bus.state.threads == {}
    assert not [e for e in live.events if e.kind is EventKind.THREAD_SPAWNED]
