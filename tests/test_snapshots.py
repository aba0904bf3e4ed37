"""Snapshot tests of the main screen at 120x40 and 200x60: a fixed scene (sim seed, fixed
clock and session id, no animations), so any visual change is a visible diff."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tower.core.events import ThreadState
from tower.core.project import load_project
from tower.ui.app import TowerApp

os.environ["TEXTUAL_ANIMATIONS"] = "none"

FIXTURE = Path(__file__).parent / "fixtures" / "snapshot"
CLOCK = 1_800_000_000.0


def scene_ready(app: TowerApp) -> bool:
    state = app.state()
    counts = {s: state.count(s) for s in ThreadState}
    return (
        counts[ThreadState.WAITING] == 3
        and counts[ThreadState.DONE] == 2
        and counts[ThreadState.QUEUED] == 2
        and len(state.inbox) == 3
    )


def make_app(tmp_path: Path) -> TowerApp:
    return TowerApp(
        load_project(FIXTURE),
        tmp_path / "t.db",
        clock=lambda: CLOCK,
        session_id="snapshot-session",
        watch=False,
    )


async def ticks(pilot, n: int) -> None:
    """Waits until the app's render timer has run n more times."""
    target = pilot.app.ticks + n
    while pilot.app.ticks < target:
        await pilot.pause()


async def settle(pilot) -> None:
    """Waits, on the bus's events, until the scene is complete; then lets the screen catch up."""
    app = pilot.app
    await asyncio.wait_for(app.booted.wait(), 60)
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()

    def check(_event: object = None) -> None:  # runs on the core's thread
        if scene_ready(app):
            loop.call_soon_threadsafe(ready.set)

    app.bus.subscribe(check)
    check()
    await asyncio.wait_for(ready.wait(), 60)
    await ticks(pilot, 2)  # the last events become rows and toasts
    app.inbox_list.cursor = 0  # the cursor follows its item, so it depends on arrival order
    await ticks(pilot, 2)
    app.clear_notifications()
    await pilot.pause()
    await pilot.pause()


@pytest.mark.parametrize("size", [(120, 40), (200, 60)])
def test_main_screen(snap_compare, tmp_path, size) -> None:
    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=settle)


def test_inbox_item_selected(snap_compare, tmp_path) -> None:
    async def run_before(pilot) -> None:
        await settle(pilot)
        await pilot.press("right_square_bracket", "right_square_bracket")

    assert snap_compare(make_app(tmp_path), terminal_size=(160, 48), run_before=run_before)
