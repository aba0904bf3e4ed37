"""The replay screen, driven by keys through the pilot: it shows exactly the folded state at
the cursor, and steps, seeks, plays and follows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.tui_harness import pilot_until
from tower.core.project import load_project
from tower.core.session import run_headless
from tower.core.state import fold, state_to_dict
from tower.core.store import Store
from tower.ui.replay_app import ReplayApp, parse_target
from tower.ui.widgets.threads import ThreadList

os.environ["TEXTUAL_ANIMATIONS"] = "none"


@pytest.fixture
async def recorded(tmp_path: Path):
    db = tmp_path / "t.db"
    result = await run_headless(load_project(REPO / "sample_projects" / "code_review"), db, "all")
    store = await Store.open(db)
    events = [ev async for ev in store.events(result.summary["session"])]
    await store.close()
    return db, result.summary["session"], events


def same(app: ReplayApp, events) -> bool:
    assert app.rp is not None
    return state_to_dict(app.state()) == state_to_dict(fold(events[: app.rp.pos]))


async def test_keys_step_seek_play_and_follow(recorded) -> None:
    db, session, events = recorded
    app = ReplayApp(db, session[:10])
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.rp is not None)
        rp = app.rp
        assert rp is not None and rp.pos == 1 and rp.last == len(events)
        await pilot.press("right", "right")
        assert rp.pos == 3 and same(app, events)
        await pilot.press("g")
        await pilot.press(*"#40", "enter")
        await pilot_until(pilot, lambda: rp.pos == 40)
        assert same(app, events)
        assert len(app.query_one(ThreadList).rows) == len(fold(events[:40]).threads)
        await pilot.press("left")
        assert rp.pos == 39 and same(app, events)
        await pilot.press("shift+right")
        assert rp.pos >= 39 and same(app, events)
        await pilot.press("t")
        assert app.follow == app.query_one(ThreadList).current
        await pilot.press("plus", "plus", "plus", "plus", "plus", "plus")
        assert app.speed_i == 6
        await pilot.press("g")
        await pilot.press(*"#1", "enter")
        await pilot_until(pilot, lambda: rp.pos == 1)
        await pilot.press("space")  # at 64x one tick plays this short session to its end
        await pilot_until(pilot, lambda: rp.pos == rp.last and not app.playing)
        assert same(app, events)
        timeline = str(app.query_one("#timeline").render())
        assert f"event {rp.last:,}/{rp.last:,}" in timeline and "approval" in timeline
        await pilot.press("q")
    assert app.return_code == 0


async def test_unknown_session_exits_2(recorded) -> None:
    db, _session, _events = recorded
    app = ReplayApp(db, "nope")
    async with app.run_test() as pilot:
        await pilot_until(pilot, lambda: not app.is_running)
    assert app.return_code == 2


def test_goto_targets() -> None:
    assert parse_target("#12", 100.0) == ("seq", 12.0)
    assert parse_target("12", 100.0) == ("seq", 12.0)
    assert parse_target("2m30s", 100.0) == ("ts", 250.0)
    assert parse_target("1h", 0.0) == ("ts", 3600.0)
    with pytest.raises(ValueError):
        parse_target("soon", 0.0)
