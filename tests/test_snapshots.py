"""Snapshot tests of the main screen at 120x40 and 200x60: a fixed scene (sim seed, fixed
clock and session id, no animations), so any visual change is a visible diff."""

from __future__ import annotations

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


async def settle(pilot) -> None:  # noqa: ANN001
    app = pilot.app
    await app.booted.wait()
    for _ in range(2000):  # a bound, not a delay: each pause yields to the app once
        if scene_ready(app):
            break
        await pilot.pause()
    assert scene_ready(app)
    app.clear_notifications()
    await pilot.pause()
    await pilot.pause()


@pytest.mark.parametrize("size", [(120, 40), (200, 60)])
def test_main_screen(snap_compare, tmp_path, size) -> None:
    assert snap_compare(make_app(tmp_path), terminal_size=size, run_before=settle)


def test_inbox_item_selected(snap_compare, tmp_path) -> None:
    async def run_before(pilot) -> None:  # noqa: ANN001
        await settle(pilot)
        await pilot.press("right_square_bracket", "right_square_bracket")

    assert snap_compare(make_app(tmp_path), terminal_size=(160, 48), run_before=run_before)
