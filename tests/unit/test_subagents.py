"""What spawn_agent and wait_agents accept from a model (hostile arguments included) and
what they answer; the tree helpers of the state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tower.core.events import Event, EventKind, ThreadState
from tower.core.project import project_from_data
from tower.core.state import ThreadView, TowerState, root_of, subtree
from tower.core.subagents import (
    ANSWER_CHARS,
    collected_from,
    results_text,
    spawn_request,
    spawned_text,
    tree_lines,
    wait_ids,
)
from tower.core.tools import ToolError


def _project(depth: int = 2, children: int = 3):
    return project_from_data(
        {
            "project": {"name": "p"},
            "limits": {"max_depth": depth, "max_children": children},
            "agents": [{"name": "lead"}, {"name": "reader"}],
        },
        Path("."),
        "test",
    )


def _view(tid: str, depth: int = 0, children: list[str] | None = None, **kw) -> ThreadView:
    return ThreadView(
        id=tid,
        agent="lead",
        task="",
        title=tid,
        cascade=["sim/small"],
        model="sim/small",
        priority=0,
        created=0.0,
        depth=depth,
        children=list(children or []),
        **kw,
    )


def test_a_well_formed_request() -> None:
    req = spawn_request(
        {"prompt": "  read a.py  ", "agent": "reader", "budget_usd": 0.5, "title": " a "},
        _view("lead"),
        "lead",
        _project(),
        1.0,
    )
    assert (req.prompt, req.agent, req.budget_usd, req.title, req.model) == (
        "read a.py",
        "reader",
        0.5,
        "a",
        None,
    )
    # Defaults: the parent's own template, no cap of its own.
    req = spawn_request({"prompt": "x"}, _view("lead"), "lead", _project(), math.inf)
    assert (req.agent, req.budget_usd) == ("lead", None)


HOSTILE = [
    ({}, "needs a prompt"),
    ({"prompt": ""}, "needs a prompt"),
    ({"prompt": "   "}, "needs a prompt"),
    ({"prompt": 42}, "needs a prompt"),
    ({"prompt": ["a"]}, "needs a prompt"),
    ({"prompt": "p", "agent": "ghost"}, "no agent template 'ghost'"),
    ({"prompt": "p", "agent": 7}, "no agent template 7"),
    ({"prompt": "p", "agent": ["reader"]}, "no agent template"),
    ({"prompt": "p", "model": 3}, "model must be"),
    ({"prompt": "p", "budget_usd": "0.1"}, "must be a number"),
    ({"prompt": "p", "budget_usd": True}, "must be a number"),
    ({"prompt": "p", "budget_usd": 0}, "more than 0"),
    ({"prompt": "p", "budget_usd": -1}, "more than 0"),
    ({"prompt": "p", "budget_usd": math.nan}, "more than 0"),
    ({"prompt": "p", "budget_usd": math.inf}, "more than 0"),
    ({"prompt": "p", "budget_usd": 0.75}, "more than the $0.5000 you have left"),
]


@pytest.mark.parametrize(("args", "error"), HOSTILE)
def test_hostile_spawn_arguments_are_one_line_errors_the_model_reads(
    args: dict, error: str
) -> None:
    with pytest.raises(ToolError) as exc:
        spawn_request(args, _view("lead"), "lead", _project(), 0.5)
    assert error in str(exc.value)
    assert "\n" not in str(exc.value)


def test_depth_and_fan_out_limits() -> None:
    with pytest.raises(ToolError, match=r"1 level\(s\) below a task .* allows 1"):
        spawn_request({"prompt": "p"}, _view("lead.1", depth=1), "lead", _project(depth=1), 1.0)
    full = _view("lead", children=["lead.1", "lead.2", "lead.3"])
    with pytest.raises(ToolError, match=r"started 3 sub-agents"):
        spawn_request({"prompt": "p"}, full, "lead", _project(children=3), 1.0)
    # One below the limits is fine.
    spawn_request({"prompt": "p"}, _view("lead.1", depth=1), "lead", _project(depth=2), 1.0)


def test_spawned_text_says_the_cap() -> None:
    assert spawned_text("l.1", 0.01, 1.0).startswith("started sub-agent l.1 (up to $0.0100)")
    assert "(up to $0.2500)" in spawned_text("l.1", None, 0.25)  # bounded by the parent
    assert "(no cap of its own)" in spawned_text("l.1", None, math.inf)


def test_wait_ids() -> None:
    parent = _view("lead", children=["lead.1", "lead.2", "lead.3"])
    assert wait_ids({}, parent, {"lead.2"}) == ["lead.1", "lead.3"]
    assert wait_ids({"ids": []}, parent, set()) == ["lead.1", "lead.2", "lead.3"]
    assert wait_ids({"ids": ["lead.3", "lead.3"]}, parent, set()) == ["lead.3"]
    for bad, error in [
        ({"ids": "lead.1"}, "must be a list"),
        ({"ids": [1]}, "must be a list"),
        ({"ids": ["other.1"]}, "not your sub-agent(s): other.1; yours are lead.1"),
    ]:
        with pytest.raises(ToolError) as exc:
            wait_ids(bad, parent, set())
        assert error in str(exc.value)


def test_results_text_heads_each_child_and_cuts_long_answers() -> None:
    done = _view("l.1", answer="x" * (ANSWER_CHARS + 10), subtree_usd=0.00123)
    done.state = ThreadState.DONE
    failed = _view("l.2", reason="budget")
    failed.state = ThreadState.FAILED
    text = results_text([done, failed])
    assert text.startswith("## l.1 (done, $0.0012)\n" + "x" * ANSWER_CHARS + " … [10 more")
    assert "## l.2 (failed, $0.0000)\n(no answer: budget)" in text
    assert results_text([]) == "You have no sub-agents to wait for."
    # A resumed parent reads back whose answers it was given.
    ev = Event(
        1,
        0.0,
        EventKind.TOOL_RESULT,
        "l",
        {"call_id": "c", "tool": "wait_agents", "ok": True, "result": text},
    )
    assert collected_from([ev]) == {"l": {"l.1", "l.2"}}


def test_tree_helpers_and_lines() -> None:
    state = TowerState()
    state.threads = {
        "a": _view("a", children=["a.1", "a.2"], subtree_usd=0.3),
        "a.1": _view("a.1", 1, ["a.1.1"], parent="a", subtree_usd=0.2),
        "a.1.1": _view("a.1.1", 2, parent="a.1", subtree_usd=0.1),
        "a.2": _view("a.2", 1, parent="a"),
        "b": _view("b"),
    }
    assert subtree(state, "a") == ["a", "a.1", "a.1.1", "a.2"]
    assert subtree(state, "a.1") == ["a.1", "a.1.1"]
    assert root_of(state, "a.1.1") == "a" and root_of(state, "b") == "b"
    names = [ln.split()[0:2] for ln in tree_lines(state)]
    assert names == [["a", "queued"], ["├─", "a.1"], ["│", "└─"], ["└─", "a.2"]]
    assert "subtree $0.3000 (4 threads)" in tree_lines(state)[0]


def test_the_transcript_of_a_sub_agent_says_whose_it_is() -> None:
    from tower.core import payloads as pl
    from tower.ui.screens.detail import transcript_lines

    spawned = pl.ThreadSpawned(
        agent="reader",
        task="",
        title="read a.py",
        cascade=["sim/small"],
        model="sim/small",
        priority=0,
        prompt="Read a.py and report.",
        parent="lead",
        spawned_by="c3",
    )
    ev = Event(5, 0.0, EventKind.THREAD_SPAWNED, "lead.1", spawned.to_dict())
    lines = [t.plain for t in transcript_lines(ev)]
    assert lines == ["sub-agent of lead, spending from its budget", "task: Read a.py and report."]
    root = pl.ThreadSpawned(
        agent="a", task="t", title="t", cascade=["m"], model="m", priority=0, prompt="go"
    )
    plain = Event(1, 0.0, EventKind.THREAD_SPAWNED, "t", root.to_dict())
    assert [t.plain for t in transcript_lines(plain)] == ["task: go"]
