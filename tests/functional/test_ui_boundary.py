"""The boundary between the core and the screen: the UI reads the state and sends commands.

On the core's thread the UI's bus subscriber only queues the event; the UI thread reads the
queue on its tick and only then does anything change on screen. Rows are drawn holding the
state's lock (Textual paints outside the app's tick), panels keep a copy of what they drew,
and the app steers through its Control, never the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_project
from tests.tui_harness import ASK, project, task, tui
from tower.core.control import Control
from tower.core.events import Event, EventKind
from tower.core.project import PROJECT_FILE, load_project
from tower.core.session import SessionRuntime
from tower.ui.app import TowerApp
from tower.ui.widgets import inbox as inbox_mod
from tower.ui.widgets.panels import ThreadPanel

REPO = Path(__file__).resolve().parent.parent


async def test_the_subscriber_only_queues_and_the_tick_puts_the_event_on_screen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    where: dict[str, set[str]] = {"subscriber": set(), "drain": set()}
    on_event, drain = TowerApp._on_event, TowerApp._drain_events

    def subscriber(self: TowerApp, ev: Event) -> None:
        where["subscriber"].add(threading.current_thread().name)
        on_event(self, ev)

    def draining(self: TowerApp) -> None:
        where["drain"].add(threading.current_thread().name)
        drain(self)

    monkeypatch.setattr(TowerApp, "_on_event", subscriber)
    monkeypatch.setattr(TowerApp, "_drain_events", draining)
    async with tui(tmp_path, project()) as t:
        app = t.app
        assert isinstance(app.session, SessionRuntime) and isinstance(app.control, Control)
        await t.settle()
        app._timer.pause()  # no tick now: whatever changes on screen, the core did it
        assert not app._rows_dirty and not app._dirty
        control, core = app.control, app.core
        assert core is not None
        tid = await core.call(control.spawn, "a", "hello from the core")
        assert tid in app.state().threads  # the state has it at once...
        assert tid not in t.threads.rows  # ...the screen does not, until a tick
        assert not app._rows_dirty and tid not in app._dirty  # nothing marked on the core
        queued = list(app._inbound)
        assert any(ev.kind is EventKind.THREAD_SPAWNED and ev.thread == tid for ev in queued)
        app._timer.resume()
        await t.until(lambda: tid in t.threads.rows, "the row after a tick")
        await t.settle()
        assert "hello from the core" in t.row(tid)
    assert where["subscriber"] == {"tower-core"}
    assert where["drain"] == {threading.current_thread().name}  # the UI's own thread


async def test_rows_are_drawn_holding_the_state_lock_and_panels_keep_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=3))) as t:
        await t.ready(lambda: len(t.items()) == 3, "three questions")
        control = t.app.control
        assert control is not None
        lock: Any = control.lock
        held: list[bool] = []
        for widget in (t.threads, t.inbox):
            real_row = widget.row

            def row(key: str, width: int, real_row: Any = real_row) -> Any:
                held.append(lock._is_owned())  # this thread holds the bus's lock
                return real_row(key, width)

            widget.row = row  # type: ignore[method-assign]
            widget.refresh()
        await t.until(lambda: len(held) >= 6, "the rows painted")
        assert all(held), held
        # A key that rebuilds a list (expand, mark, follow) walks the state under it too.
        walked: list[bool] = []
        real_situations = inbox_mod.situations

        def situations(*args: Any, **kwargs: Any) -> Any:
            walked.append(lock._is_owned())
            return real_situations(*args, **kwargs)

        monkeypatch.setattr(inbox_mod, "situations", situations)
        assert not lock._is_owned()
        t.inbox.rebuild()
        assert walked == [True]
        panels = [p for p in t.app.query(ThreadPanel) if p.thread is not None]
        assert panels
        for panel in panels:
            live = t.state().threads[panel.thread or ""]
            assert panel._view is not live and panel._view == live


def test_the_ui_reaches_no_supervisor_internals() -> None:
    """The screens and widgets hold a Control and the state: no `sup.` anywhere in tower/ui."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in sorted((REPO / "tower" / "ui").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "sup." in line
    ]
    assert offenders == []


async def test_the_tui_runs_the_same_preflight_and_records_nothing(tmp_path: Path) -> None:
    """An unknown model stops the TUI before anything runs, with the preflight's own lines."""
    toml = project().replace('cascade = ["sim/instant"]', 'cascade = ["no-such-model-xyz"]')
    root = write_project(tmp_path / "proj", toml)
    app = TowerApp(load_project(root), tmp_path / "t.db", watch=False, offer_resume=False)
    async with app.run_test(size=(120, 40)) as pilot:

        async def stopped() -> None:
            while app.return_code is None:
                await pilot.pause()

        await asyncio.wait_for(stopped(), 30)
        (message,) = app._exit_renderables  # printed (and cleared) once the app has left
    assert app.return_code == 2 and app.session is None and app.control is None
    with contextlib.closing(sqlite3.connect(tmp_path / "t.db")) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    lines = str(message).splitlines()
    assert lines and all(line.startswith(f"{root / PROJECT_FILE}: agents[") for line in lines)
    assert any("agents[1].cascade[0]: " in line and "no-such-model-xyz" in line for line in lines)
