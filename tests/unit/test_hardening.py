"""Hostile or careless inputs found in review: each once broke something, and must not again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.helpers import WAIT_S, pids_running
from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import EventKind
from tower.core.experiment import VariantScore, table, winner
from tower.core.project import ProjectError, parse_project
from tower.core.secrets import is_secret_name
from tower.core.store import Store
from tower.core.tools import files
from tower.core.tools.files import ToolError, Workspace
from tower.core.tools.shell import run_shell


async def test_a_lone_surrogate_in_tool_arguments_does_not_break_the_log(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "t.db")
    await store.create_session("s", "p", str(tmp_path), time.time(), {})
    store.start_writer("s")
    bus = Bus(store, secrets={})
    bus.emit(pl.ToolCalled(call_id="c", tool="read_file", args={"path": "\ud800x"}), "t")
    bus.emit(pl.Comment(text="after"), "t")
    await asyncio.wait_for(store.flush(), 10)
    got = [ev.payload async for ev in store.events("s")]
    await store.close()
    assert got[0]["args"]["path"].endswith("x") and "\ud800" not in got[0]["args"]["path"]
    assert got[1] == {"text": "after", "by": "human"}  # the next event is stored whole


async def test_a_surrogate_path_is_a_tool_error(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="not valid UTF-8"):
        await Workspace(tmp_path).run("read_file", {"path": "\ud800"})


async def test_a_child_that_leaves_the_process_group_does_not_hold_the_shell(
    tmp_path: Path,
) -> None:
    """`setsid` takes a child out of the command's process group, its output pipe still
    open: the command times out all the same, and the shell returns without waiting for
    that child (which sleeps far longer than the cap on this wait)."""
    marker = "300.5151"  # the escaped child's sleep, to find it by
    try:
        out = await asyncio.wait_for(
            run_shell(
                f"setsid sleep {marker} & sleep 100", tmp_path, timeout_s=0.5, max_output_bytes=4000
            ),
            WAIT_S,
        )
        assert out.startswith("timed out after 0.5 s")
    finally:
        for pid in pids_running(marker):  # outside the sandbox, it outlives the command
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_catastrophic_regex_is_stopped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "REGEX_SEARCH_S", 1.0)
    (tmp_path / "a.txt").write_text("a" * 32 + "!\n")  # (a+)+$ takes minutes and more here
    search = Workspace(tmp_path).run("search", {"pattern": "(a+)+$", "regex": True})
    with pytest.raises(ToolError, match="took longer than 1 s"):
        await asyncio.wait_for(search, WAIT_S)
    (tmp_path / "b.txt").write_text("needle\n")
    found = await Workspace(tmp_path).run("search", {"pattern": "ne+dle", "regex": True})
    assert found == "b.txt:1: needle"


@pytest.mark.parametrize("path", [".GIT/hooks/pre-commit", "Tower.toml", ".Tower/x"])
async def test_protected_names_are_protected_in_any_case(tmp_path: Path, path: str) -> None:
    with pytest.raises(ToolError, match="protected"):
        await Workspace(tmp_path).run("write_file", {"path": path, "content": "x"})
    assert sorted(os.listdir(tmp_path)) == []


async def test_rewriting_a_script_keeps_it_executable(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("echo old\n")
    script.chmod(0o755)
    await Workspace(tmp_path).run("write_file", {"path": "run.sh", "content": "echo new\n"})
    assert script.read_text() == "echo new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_secret_names_are_words_not_substrings() -> None:
    assert not is_secret_name("GIT_AUTHOR_EMAIL")
    assert not is_secret_name("SSH_AUTH_SOCK")
    assert not is_secret_name("XAUTHORITY")
    assert is_secret_name("AUTH_HEADER") and is_secret_name("HTTP_AUTHORIZATION")


@pytest.mark.parametrize("name", ["a__b", "git_", "x y"])
def test_mcp_server_names_split_back_unambiguously(tmp_path: Path, name: str) -> None:
    text = f"""
[project]
name = "p"
[[mcp_servers]]
name = "{name}"
command = "true"
[[agents]]
name = "a"
"""
    with pytest.raises(ProjectError) as info:
        parse_project(text, tmp_path)
    assert "mcp_servers[0].name" in info.value.problems[0]


def _score(name: str, cost: float, unpriced: int) -> VariantScore:
    return VariantScore(
        name, f"{name}.toml", "s", 2, 2, 2, 0, cost, 100, 1.0, 2.0, 0.0, 0.0, {}, unpriced
    )


def test_an_unpriced_variant_is_never_the_cheapest() -> None:
    local = _score("local", 0.0, 5000)
    cloud = _score("cloud", 0.02, 0)
    assert local.cost_per_success is None
    assert winner([local, cloud]) == "cloud"
    row = next(r for r in table([local, cloud]) if r[0] == "local")
    assert row[2] == "no price" and row[3] == "no price"


LOOPING_ERRORS = """
[project]
name = "loop"
retry_backoff_s = 0

[models."sim/small"]
latency_s = 0
tokens_per_s = 0

[[agents]]
name = "a"
cascade = ["sim/small", "sim/large"]
tools = ["read_file", "finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "read"

[[tasks.script]]
tool = "read_file"
args = { path = "nope.txt" }

[[tasks.script]]
tool = "read_file"
args = { path = "nope.txt" }

[[tasks.script]]
tool = "read_file"
args = { path = "nope.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "gave up" }
"""


async def test_one_trouble_escalates_once(live_factory) -> None:
    """Three identical failing calls are both a loop and an error streak: one escalation."""
    live = await live_factory(LOOPING_ERRORS, approve="all")
    await live.waiter.until(lambda: live.view("t").state.ended)
    escalated = [e.payload for e in live.events if e.kind is EventKind.ESCALATED]
    assert [(e["from_model"], e["to_model"]) for e in escalated] == [("sim/small", "sim/large")]
    assert not [e for e in live.events if e.kind is EventKind.INBOX_OPENED]
