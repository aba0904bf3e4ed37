"""Control, the narrow command API a front end steers a session through (core/control.py).

Each command must reach the supervisor and show in the state (the only thing a front end
reads back); a command that cannot apply must raise CommandError, never act on something
else; the queries must give what the supervisor knows, as plain values.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import Live, ended
from tests.helpers import write_project
from tower.core.control import CallFigures, CommandError, Control
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.core.project import load_project

LiveFactory = Callable[..., Awaitable[Live]]

PROJECT = """
[project]
name = "control"
retry_backoff_s = 0

[budget]
usd = 5.0

[[agents]]
name = "a"
cascade = ["sim/instant", "sim/small"]
tools = ["read_file", "write_file", "list_dir", "ask_human", "finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "do it"
workspace = "ws"

[[tasks.script]]
say = "Need a decision."
tool = "ask_human"
args = { question = "Which year?" }

[[tasks.script]]
say = "Writing the result."
tool = "write_file"
args = { path = "out.txt", content = "2025" }

[[tasks.script]]
tool = "finish"
args = { answer = "written" }
"""

FILES = {"ws/readme.txt": "hello\n"}


async def started(live_factory: LiveFactory) -> tuple[Live, Control]:
    """A live session whose thread `t` waits on its question."""
    live = await live_factory(PROJECT, FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    return live, Control(live.sup)


def test_control_imports_no_textual() -> None:
    """The command API is core: a socket client must be able to use it without a screen."""
    import subprocess

    code = "import sys, tower.core.control; print('textual' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "command",
    [
        lambda c: c.pause("nope"),
        lambda c: c.resume("nope"),
        lambda c: c.kill("nope"),
        lambda c: c.escalate("nope"),
        lambda c: c.reply("nope", "hello"),
        lambda c: c.approve("i999"),
        lambda c: c.deny("i999"),
        lambda c: c.raise_budget("nope", usd=1.0),
        lambda c: c.revoke("g999"),
        lambda c: c.spawn("nobody", "x"),
        lambda c: c.spawn_task("no-such-task"),
    ],
    ids=[
        "pause",
        "resume",
        "kill",
        "escalate",
        "reply",
        "approve",
        "deny",
        "raise_budget",
        "revoke",
        "spawn",
        "spawn_task",
    ],
)
async def test_a_command_on_an_unknown_target_raises_command_error_and_changes_nothing(
    live_factory: LiveFactory, command: Callable[[Control], object]
) -> None:
    live, control = await started(live_factory)
    seq = live.bus.seq
    with pytest.raises(CommandError):
        command(control)
    assert live.bus.seq == seq  # nothing was recorded
    assert live.view("t").state is ThreadState.WAITING


async def test_pause_and_resume_go_through_the_state(live_factory: LiveFactory) -> None:
    _, control = await started(live_factory)
    control.pause("t")
    assert control.state.threads["t"].pause_requested is True
    control.resume("t")
    assert control.state.threads["t"].pause_requested is False
    control.pause_all()
    assert control.state.threads["t"].pause_requested is True
    control.resume_all()
    assert control.state.threads["t"].pause_requested is False


async def test_decisions_reach_the_thread(live_factory: LiveFactory) -> None:
    live, control = await started(live_factory)
    question = live.item_of("t")
    assert control.is_open(question)
    control.reply(question, "2025", attention_s=2.0)
    assert not control.is_open(question)
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    approval = live.item_of("t")
    control.approve(approval, args={"path": "edited.txt", "content": "by hand"})
    await live.waiter.until(ended(live))
    assert live.view("t").state is ThreadState.DONE
    root, original = control.workspace_folders("t")
    assert root is not None and (root / "edited.txt").read_text() == "by hand"
    assert original == live.project.root / "ws"
    closed = live.kinds("t", EventKind.INBOX_CLOSED)
    assert [e.payload["item"] for e in closed] == [question, approval]
    assert closed[0].payload["attention_s"] == 2.0


async def test_deny_with_a_comment_is_what_the_agent_reads(live_factory: LiveFactory) -> None:
    live, control = await started(live_factory)
    control.deny(live.item_of("t"), comment="not today")
    closed = live.kinds("t", EventKind.INBOX_CLOSED)
    assert closed[-1].payload["resolution"] == "denied"
    assert closed[-1].payload["text"] == "not today"


async def test_kill_escalate_and_spawn(live_factory: LiveFactory) -> None:
    _, control = await started(live_factory)
    assert control.escalate("t") == "sim/small"
    assert control.state.threads["t"].model == "sim/small"
    tid = control.spawn("a", "Say hello", model="sim/instant")
    assert tid in control.state.threads
    copy = control.task_copy("t")
    assert [c.thread_id for c in control.task_copies()] == [copy.thread_id]
    again = control.spawn_task("t")
    assert again == copy.thread_id and again in control.state.threads
    control.kill("t")
    assert control.state.threads["t"].state is ThreadState.KILLED
    with pytest.raises(CommandError):
        control.kill("t")  # already ended


async def test_budget_grant_and_revoke(live_factory: LiveFactory) -> None:
    _, control = await started(live_factory)
    control.raise_budget(None, usd=1.5)
    assert control.state.budget.limit_usd == pytest.approx(6.5)
    rid = control.grant("read_file", {"path": "docs/**"}, agent="a", minutes=10)
    assert rid in control.state.grants
    control.revoke(rid)
    assert rid not in control.state.grants


async def test_reload_applies_the_project_and_its_new_secrets(
    live_factory: LiveFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    live, control = await started(live_factory)
    key = "reload-only-value-5b1e9c7d"
    monkeypatch.setenv("TOWER_TEST_RELOADED_KEY", key)
    root = write_project(
        tmp_path / "reloaded",
        PROJECT.replace('name = "control"', 'name = "reloaded"')
        + '\n[models."sim/small"]\napi_key_env = "TOWER_TEST_RELOADED_KEY"\n',
        FILES,
    )
    control.reload(load_project(root))
    assert control.project.name == "reloaded"
    assert live.events[-1].kind is EventKind.POLICY_SET
    control.reply("t", f"the key is {key}")  # a comment to the thread
    (comment,) = live.kinds("t", EventKind.COMMENT)
    assert key not in comment.payload["text"]
    assert "[redacted TOWER_TEST_RELOADED_KEY]" in comment.payload["text"]


async def test_the_call_gate_figures_are_a_frozen_copy(live_factory: LiveFactory) -> None:
    live, control = await started(live_factory)
    figures = control.calls()
    gate = live.sup.calls
    assert figures == CallFigures(gate.in_flight, gate.waiting, gate.lag.lag_s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.waiting = 3  # type: ignore[misc]
    assert control.session_id == live.sup.session_id
    assert control.lock is live.bus.lock


TREE = """
[project]
name = "tree"
retry_backoff_s = 0

[policy]
allow = ["spawn_agent"]
ask = [{ tool = "read_file", agent = "reader" }]

[[agents]]
name = "lead"
cascade = ["sim/instant"]
tools = ["list_dir", "spawn_agent", "wait_agents", "finish"]

[[agents]]
name = "reader"
cascade = ["sim/instant", "sim/small"]
tools = ["read_file", "finish"]

[[tasks]]
id = "lead"
agent = "lead"
workspace = "ws"
prompt = "Read every file with one reader each."

[[tasks.script]]
tool = "list_dir"
args = { path = "." }

[[tasks.script]]
tool = "spawn_agent"
each = "file"
args = { agent = "reader", prompt = "Read {file}.", title = "read {file}" }

[[tasks.script]]
tool = "wait_agents"

[[tasks.script]]
tool = "finish"
args = { answer = "merged" }
"""


async def test_subtree_commands_act_on_the_subtree_only(live_factory: LiveFactory) -> None:
    """A lead whose two readers wait for approval: the tree verbs reach the lead and its
    children, never a thread outside the tree; one with nothing left to do raises."""
    live = await live_factory(TREE, {"ws/a.txt": "a\n", "ws/b.txt": "b\n"})
    state = live.bus.state
    await live.waiter.until(
        lambda: (
            "lead.2" in state.threads
            and all(state.threads[c].pending for c in ("lead.1", "lead.2"))
        )
    )
    control = Control(live.sup)
    other = control.spawn("reader", "outside the tree")
    kids = ["lead.1", "lead.2"]
    # A sub-agent works in its tree's root's folder: the files view shows that one.
    await live.waiter.until(lambda: live.sup.runs["lead.1"].workspace is not None)
    assert control.workspace_folders("lead.1") == control.workspace_folders("lead")
    assert control.workspace_folders("lead.1")[0] == live.sup.runs["lead"].workspace.root
    assert control.tree("lead") == ["lead", *kids]
    assert control.pause_tree("lead") == 3
    assert all(state.threads[t].pause_requested for t in ["lead", *kids])
    assert not state.threads[other].pause_requested
    assert control.pause_tree("lead") == 0  # already asked: nothing more to do
    assert control.resume_tree("lead") == 3
    assert not any(state.threads[t].pause_requested for t in ["lead", *kids])
    assert control.escalate_tree("lead") == 2  # the lead has no stronger model; each reader
    assert [state.threads[t].model for t in ["lead", *kids]] == ["sim/instant", *["sim/small"] * 2]
    with pytest.raises(CommandError):
        control.escalate_tree("lead")  # no stronger model left anywhere in it
    assert state.threads[other].model == "sim/instant"
    assert control.kill_tree("lead") == 3
    await live.waiter.until(ended(live, "lead", *kids))
    assert all(state.threads[t].state is ThreadState.KILLED for t in ["lead", *kids])
    assert state.threads[other].state is not ThreadState.KILLED
    with pytest.raises(CommandError):
        control.tree("nope")
