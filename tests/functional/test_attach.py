"""The TUI as a view of a running fleet (`tower attach`): the screen shows the fleet's state
as its service holds it, a key decides the item on screen over the socket (and the fleet's
own log records it), and q asks: detach (the fleet keeps running) or stop the fleet."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleets import fleet_place
from tests.fleets import ls as fleet_ls
from tests.helpers import REPO, db_events, tower
from tests.tui_harness import booted
from tower.core.events import EventKind, InboxKind
from tower.core.project import load_project
from tower.ui.app import TowerApp
from tower.ui.screens.dialogs import ChoiceDialog, TextDialog


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """tax_return running as a service (`tower up`), in a private runtime folder."""
    with fleet_place(tmp_path) as place:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(place["runtime"]))
        up = tower("up", place["proj"], "--db", place["db"], env=place["env"], home=tmp_path)
        assert up.returncode == 0, up.stderr
        session = up.stdout.strip()
        yield {
            **place,
            "session": session,
            "sock": place["runtime"] / "tower" / f"{session}.sock",
            "home": tmp_path,
        }


def attached(f: dict[str, Any]) -> TowerApp:
    return TowerApp(
        load_project(f["proj"]), f["db"], watch=False, offer_resume=False, attach=f["sock"]
    )


def ls(f: dict[str, Any]) -> list[dict[str, Any]]:
    return fleet_ls(f["env"])


async def test_a_view_decides_the_item_on_screen_and_detaches_leaving_the_fleet_running(
    fleet: dict[str, Any],
) -> None:
    f = fleet
    async with booted(attached(f), f["db"], check_log=False) as t:
        await t.until(lambda: len(t.state().inbox) == 3, "the fleet's three questions")
        assert t.app.sub_title == f"attached to {f['session']}"
        await t.until(lambda: t.app.shown is not None, "an item on screen")
        shown = t.app.shown
        assert shown is not None and len(shown.items) == 1
        item = shown.items[0]
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        assert dialog is not None
        await t.press(*"Agree, not reported.", "enter")
        await t.until(lambda: item not in t.state().inbox, "the item decided by the fleet")
        # The fleet's own log has the decision, on the item that was on screen.
        closed = [
            e.payload
            for e in db_events(f["db"], f["session"])
            if e.kind is EventKind.INBOX_CLOSED and e.payload["item"] == item
        ]
        assert [(c["resolution"], c["text"]) for c in closed] == [
            ("answered", "Agree, not reported.")
        ]
        # The thread the answer went to goes on: its next item reaches this view.
        thread = next(
            e.thread
            for e in db_events(f["db"], f["session"])
            if e.kind is EventKind.INBOX_OPENED and e.payload["item"] == item
        )
        await t.until(
            lambda: any(
                i.thread == thread and i.kind is InboxKind.APPROVAL
                for i in t.state().inbox.values()
            ),
            "its write_file approval",
        )
        await t.press("q")
        choice = await t.screen_is(ChoiceDialog)
        assert "Detached, it keeps running" in choice.question
        await t.press("d")
        await t.until(lambda: not t.app.is_running, "the view leaves")
    (row,) = ls(f)
    assert (row["session"], row["status"]) == (f["session"], "running")


async def test_q_then_s_stops_the_fleet(fleet: dict[str, Any]) -> None:
    f = fleet
    (row,) = ls(f)
    async with booted(attached(f), f["db"], check_log=False) as t:
        await t.until(lambda: len(t.state().threads) == 5, "the fleet's threads")
        await t.press("q")
        await t.screen_is(ChoiceDialog)
        await t.press("s")
        await t.until(lambda: not t.app.is_running, "the view leaves")
    for _ in range(500):  # each a CLI round trip: until the service has flushed and exited
        if not _alive(row["pid"]):
            break
        ls(f)
    assert not _alive(row["pid"]) and ls(f) == []
    events = db_events(f["db"], f["session"])
    assert events[-1].kind is EventKind.SESSION_ENDED


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_attaching_to_a_fleet_that_is_gone_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = Path(tempfile.mkdtemp(prefix="tw-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    proj = tmp_path / "tax_return"
    shutil.copytree(REPO / "sample_projects" / "tax_return", proj)
    app = TowerApp(load_project(proj), tmp_path / "t.db", watch=False, attach=runtime / "nope.sock")
    async with app.run_test() as pilot:
        for _ in range(200):
            if not app.is_running:
                break
            await pilot.pause()
    assert app.return_code == 2
    shutil.rmtree(runtime, ignore_errors=True)


LATER = """
[[tasks]]
id = "later"
agent = "preparer"
prompt = "added while the fleet ran"
"""


async def test_a_view_is_told_when_the_fleet_reloads_its_tower_toml(
    fleet: dict[str, Any],
) -> None:
    """The fleet follows its tower.toml (no view has to watch it); a view says so, and
    offers the new task; a bad edit is shown as refused and the view keeps what runs."""
    f = fleet
    toml = f["proj"] / "tower.toml"
    good = toml.read_text() + LATER
    async with booted(attached(f), f["db"], check_log=False) as t:
        assert "later" not in {c.task.id for c in t.app.control.task_copies()}
        toml.write_text(good)
        await t.until(lambda: t.toast("task(s) ready to spawn"), "the reload toast")
        assert any(x.startswith("tower.toml reloaded |") for x in t.toast_texts())
        assert "later" in {task.id for task in t.app.project.tasks}
        assert "later" in {c.task.id for c in t.app.control.task_copies()}
        toml.write_text(good + '\n[limits]\nmax_concurrent = "many"\n')
        await t.until(lambda: t.toast("kept the previous version"), "the refusal toast")
        assert any(x.startswith("tower.toml not reloaded |") for x in t.toast_texts())
        assert "later" in {task.id for task in t.app.project.tasks}
