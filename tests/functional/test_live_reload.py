"""Live reload, through the running TUI: tower.toml and keys.toml are edited on disk while
tower runs; the app's own file watchers (watchfiles) reload them, the screen says so, and the
keys act on the new version: `o` shows the new policy, new threads obey it, `n` offers the
new tasks, a rebound key does its action on the selected thread. A broken edit is reported
and changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from tests.helpers import save
from tests.tui_harness import ASK, WRITE, Tui, pick_task, project, task, tui, waiting_on
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.ui import app as app_module
from tower.ui.screens.dialogs import SpawnDialog
from tower.ui.screens.policy import PolicyScreen

# One thread that asks to write out.txt (the default policy asks the human for writes).
BEFORE = project(task(WRITE, "w"))
DENY_WRITES = '\n[policy]\ndeny = ["write_file"]\n'
LATER = """
[[agents]]
name = "c"
cascade = ["sim/small"]

[[tasks]]
id = "later"
agent = "c"
prompt = "added while tower ran"

[[tasks.script]]
tool = "finish"
args = { answer = "late but done" }
"""


@pytest.fixture
def watching(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the app's watcher of tower.toml watches: the app starts the real watcher,
    here with watch_file's own `ready` event, so no edit can come before it looks."""
    ready = asyncio.Event()
    real = app_module.watch_file

    async def watch_file(path: Path, on_change: Any, stop_event: Any = None, **options: Any):
        return await real(path, on_change, stop_event, ready=ready, **options)

    monkeypatch.setattr(app_module, "watch_file", watch_file)
    return ready


async def started(t: Tui, watching: asyncio.Event) -> Path:
    """Waits until tower.toml is watched and w has come to a stop (its write waiting for an
    approval, or refused and done); returns the file."""

    def w_stopped() -> bool:
        if "w" not in t.state().threads:
            return False
        return waiting_on(t, 1, InboxKind.APPROVAL)() or t.view("w").state.ended

    await t.until(watching.is_set, "tower.toml watched")
    await t.ready(w_stopped, "w stops")
    return t.app.project.root / "tower.toml"


async def reloaded(t: Tui, outcome: str) -> str:
    """Waits for the toast titled `outcome` ("tower.toml reloaded" or "… not reloaded");
    returns its text."""

    def said() -> list[str]:
        return [s for s in t.toast_texts() if s.startswith(f"{outcome} |")]

    await t.until(said, outcome)
    return said()[0]


async def policy_rows(t: Tui) -> list[list[str]]:
    """`o`: the rules the policy screen shows, then escape."""
    await t.press("o")
    screen = await t.screen_is(PolicyScreen)
    table = screen.query_one("#rules", DataTable)
    rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
    await t.press("escape")
    await t.screen_is(type(t.app.get_default_screen()))
    return rows


async def spawn_task(t: Tui, row: int) -> str:
    """`n`, the task at `row` of the dialog's list (0 is "none"), enter: the new thread."""
    await t.press("n")
    dialog = await t.screen_is(SpawnDialog)
    await pick_task(t, dialog, row)
    assert dialog.chosen is not None
    tid = dialog.chosen.thread_id
    await t.press("enter")
    await t.screen_is(type(t.app.get_default_screen()))
    await t.until(lambda: tid in t.state().threads and t.view(tid).state.ended, f"{tid} ends")
    return tid


async def test_an_edited_policy_is_shown_and_obeyed_at_once(tmp_path: Path, watching) -> None:
    async with tui(tmp_path, BEFORE, watch=True) as t:
        path = await started(t, watching)
        assert [r for r in await policy_rows(t) if r[-1].startswith("tower.toml")] == []

        save(path, BEFORE + DENY_WRITES)
        said = await reloaded(t, "tower.toml reloaded")
        assert "the policy and model limits apply now" in said
        rules = await policy_rows(t)
        assert rules[0] == ["deny", "write_file", "", "any", "session", "tower.toml policy.deny[0]"]

        # A thread spawned now has its write refused by the new rule, without asking anyone.
        tid = await spawn_task(t, 1)
        assert tid == "w-2" and t.view(tid).state is ThreadState.DONE
        assert t.items(tid) == []
        [result] = [
            e.payload
            for e in await t.events(tid)
            if e.kind is EventKind.TOOL_RESULT and e.payload["tool"] == "write_file"
        ]
        assert result["ok"] is False
        assert "refused by policy" in result["result"]
        assert "tower.toml policy.deny[0]" in result["result"]
        set_ = [e for e in await t.events(None) if e.kind is EventKind.POLICY_SET]
        assert [[r["tool"] for r in e.payload["policy"]] for e in set_][-1] == ["write_file"]


async def test_a_task_and_an_agent_added_to_tower_toml_can_be_spawned(
    tmp_path: Path, watching
) -> None:
    async with tui(tmp_path, BEFORE, watch=True) as t:
        path = await started(t, watching)
        save(path, BEFORE + LATER)
        said = await reloaded(t, "tower.toml reloaded")
        assert "3 agent(s), 2 task(s) ready to spawn (n)" in said  # a, b and c

        tid = await spawn_task(t, 2)  # w, then the new task
        assert tid == "later"
        view = t.view(tid)
        assert (view.agent, view.title) == ("c", "added while tower ran")
        assert view.state is ThreadState.DONE and view.answer == "late but done"


async def test_a_broken_edit_is_reported_and_the_running_version_kept(
    tmp_path: Path, watching
) -> None:
    async with tui(tmp_path, BEFORE + DENY_WRITES, watch=True) as t:
        path = await started(t, watching)
        before = await policy_rows(t)
        assert before[0][:2] == ["deny", "write_file"]

        save(path, "[project\nname = 'x'\n")
        said = await reloaded(t, "tower.toml not reloaded")
        assert f"{path}: " in said and "not valid TOML" in said
        assert "kept the previous version" in said
        assert await policy_rows(t) == before  # nothing changed
        tid = await spawn_task(t, 1)  # the running project's task, under its rule
        assert tid == "w-2" and t.items(tid) == []

        # Fixed: the next save reloads as usual.
        save(path, (BEFORE + DENY_WRITES).replace('deny = ["write_file"]', 'deny = ["list_dir"]'))
        await reloaded(t, "tower.toml reloaded")
        assert (await policy_rows(t))[0][:2] == ["deny", "list_dir"]


# --- keys.toml ------------------------------------------------------------------------------


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> dict[str, asyncio.Event]:
    """The app's watchers, by file name: each set once its file is watched."""
    ready: dict[str, asyncio.Event] = {}
    real = app_module.watch_file

    async def watch_file(path: Path, on_change: Any, stop_event: Any = None, **options: Any):
        event = ready.setdefault(Path(path).name, asyncio.Event())
        return await real(path, on_change, stop_event, ready=event, **options)

    monkeypatch.setattr(app_module, "watch_file", watch_file)
    return ready


async def keys_started(tmp_path: Path, t: Tui, watched: dict[str, asyncio.Event]) -> None:
    await t.until(lambda: "keys.toml" in watched and watched["keys.toml"].is_set(), "watched")
    await t.ready(waiting_on(t, 2), "two questions")
    assert t.threads.current == "t-1"


async def test_a_key_rebound_in_keys_toml_acts_at_once(tmp_path: Path, watched) -> None:
    keys = tmp_path / "config" / "keys.toml"
    keys.parent.mkdir()
    save(keys, "[keys]\n")
    async with tui(tmp_path, project(task(ASK, "t", repeat=2)), watch=True, config_file=keys) as t:
        await keys_started(tmp_path, t, watched)
        assert t.app.key_of("pause") == "p"

        save(keys, '[keys]\npause = "z"\n')
        said = await reloaded(t, "keys.toml reloaded")
        assert "keys" in said
        assert t.app.key_of("pause") == "z"
        await t.press("p")  # no longer pause
        await t.settle()
        assert not t.view("t-1").pause_requested
        await t.press("z")  # the selected thread, t-1, and only it
        await t.until(lambda: t.view("t-1").pause_requested, "t-1 pausing")
        assert not t.view("t-2").pause_requested
        assert any("pausing t-1" in s for s in t.toast_texts())


async def test_a_broken_keys_toml_is_reported_and_the_keys_kept(tmp_path: Path, watched) -> None:
    keys = tmp_path / "config" / "keys.toml"
    keys.parent.mkdir()
    save(keys, '[keys]\npause = "z"\n')
    async with tui(
        tmp_path,
        project(task(ASK, "t", repeat=2)),
        watch=True,
        config_file=keys,
        keymap={"pause": "z"},
    ) as t:
        await keys_started(tmp_path, t, watched)
        save(keys, '[keys]\npuase = "x"\n')  # a typo: an unknown action
        said = await reloaded(t, "keys.toml not reloaded")
        assert "keys.puase: unknown action (did you mean 'pause'?)" in said
        assert "kept the previous version" in said
        await t.press("z")
        await t.until(lambda: t.view("t-1").pause_requested, "z still pauses")
