"""Snapshot tests of every screen and dialog of the TUI, each at 100x30 and 160x48.

Each test boots TowerApp once on a fixed scene (sim seed, fixed clock and session id, no
animations), waits for it on the bus (never on sleeps), drives it with the keys a person
would press, and compares the screen: any visual change is a visible diff.

What the app cannot fix by itself is fixed here:
- session start and end times are wall-clock (Supervisor.start, Store.end_session), so the
  sessions list gets fixed ones written into the log before it is opened;
- an LLM call's duration (the `secs` column of a thread's cost per step) is wall-clock, so
  tower.core.llm's clock is frozen;
- the files view prints absolute paths (the thread's workspace beside the log, the project's
  folder), so that scene runs in a fixed folder under /tmp, one run at a time (a lock);
- dates are printed in local time, so TZ is UTC.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.command import CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input, Label, Select, TextArea

import tower.core.llm
from tests.helpers import FIXTURES, WAIT_S, write_project
from tests.tui_harness import pilot_until
from tower.core.bus import Bus
from tower.core.events import InboxKind, ThreadState
from tower.core.project import load_project
from tower.core.store import Store
from tower.core.supervisor import Supervisor
from tower.ui.app import TowerApp
from tower.ui.replay_app import ReplayScreen
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import SpawnDialog, TextDialog
from tower.ui.screens.files import FilesScreen
from tower.ui.screens.sessions import ExportDialog, ForkDialog, SessionsScreen
from tower.ui.widgets.rowlist import RowList

os.environ["TEXTUAL_ANIMATIONS"] = "none"

MAIN = FIXTURES / "snapshot_main"
GROUP = FIXTURES / "snapshot_group"
CLOCK = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
SESSION = "snapshot-session"
PAST = "past-session"
FIXED_DIR = Path("/tmp/tower-snapshots")  # the files view prints paths under it
SIZES = {"100x30": (100, 30), "160x48": (160, 48)}

# A finished session of the same project, recorded before the live one (sessions list,
# replay, fork): one thread at a time, so its events come in one order; `--approve all`.
PAST_PROJECT = """
[project]
name = "snapshot"
seed = 7

[limits]
max_concurrent = 1

[policy]
ask = ["write_file"]

[[agents]]
name = "analyst"
cascade = ["sim/instant"]

[[tasks]]
id = "revenue"
agent = "analyst"
title = "Summarise quarterly revenue"
prompt = "Summarise the quarterly revenue in sales.csv."
workspace = "ws"
[[tasks.script]]
say = "Reading the sales figures."
tool = "read_file"
args = { path = "sales.csv" }
[[tasks.script]]
say = "Revenue grew 12.5% from Q1 to Q2. Writing the summary."
tool = "write_file"
args = { path = "summary.md", content = "# Revenue\\nQ1 120, Q2 135: +12.5%\\n" }
[[tasks.script]]
tool = "finish"
args = { answer = "summary.md written." }

[[tasks]]
id = "forecast"
agent = "analyst"
title = "Forecast Q3"
prompt = "Forecast Q3 revenue."
[[tasks.script]]
tool = "finish"
args = { answer = "Q3 about 152 if growth holds." }
"""


# --- the scenes' states --------------------------------------------------------------------


def main_ready(app: TowerApp) -> bool:
    """tests/fixtures/snapshot_main: 3 waiting (an approval, two questions), 2 done, 2 queued."""
    state = app.state()
    counts = {s: state.count(s) for s in ThreadState}
    return (
        counts[ThreadState.WAITING] == 3
        and counts[ThreadState.DONE] == 2
        and counts[ThreadState.QUEUED] == 2
        and len(state.inbox) == 3
    )


def revenue_written(app: TowerApp) -> bool:
    """After revenue's write is approved: it and both queued threads have finished."""
    state = app.state()
    return (
        state.count(ThreadState.DONE) == 5
        and state.count(ThreadState.WAITING) == 2
        and len(state.inbox) == 2
    )


def group_ready(app: TowerApp) -> bool:
    """tests/fixtures/snapshot_group: one question, three identical write_file approvals."""
    state = app.state()
    kinds = [i.kind for i in list(state.inbox.values())]
    return (
        state.count(ThreadState.WAITING) == 4
        and kinds.count(InboxKind.APPROVAL) == 3
        and kinds.count(InboxKind.QUESTION) == 1
    )


# --- waiting, on events ---------------------------------------------------------------------


async def on_bus(pilot: Pilot, ready: Callable[[TowerApp], bool]) -> None:
    """Waits, on the bus's events, until ready(app) holds."""
    app = pilot.app
    assert isinstance(app, TowerApp)
    # An app that crashed while booting fails the test now, not after WAIT_S.
    await pilot_until(pilot, lambda: app.booted.is_set() or app.return_code is not None)
    assert app.session is not None, f"the app stopped before it booted ({app.return_code})"
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def check(_event: object = None) -> None:  # runs on the core's thread
        if ready(app):
            loop.call_soon_threadsafe(done.set)

    unsubscribe = app.session.bus.subscribe(check)
    try:
        check()
        await asyncio.wait_for(done.wait(), WAIT_S)
    finally:
        unsubscribe()


async def ticks(pilot: Pilot, n: int) -> None:
    """Waits until the app's render timer has run n more times."""
    app = pilot.app
    assert isinstance(app, TowerApp)
    target = app.ticks + n
    while app.ticks < target:
        await pilot.pause()


def label_text(label: Label) -> str:
    return str(label.content)


# --- the driver -----------------------------------------------------------------------------

Act = Callable[[Pilot], Awaitable[None]]


@dataclass(frozen=True)
class Scene:
    act: Act | None = None  # keys pressed once the scene is ready
    project: Path = MAIN
    ready: Callable[[TowerApp], bool] = main_ready
    past: bool = False  # a finished session recorded first (the sessions list)
    fixed_dir: bool = False  # db and project under FIXED_DIR (the screen prints paths)


async def start(pilot: Pilot, scene: Scene) -> None:
    app = pilot.app
    assert isinstance(app, TowerApp)
    await on_bus(pilot, scene.ready)
    await ticks(pilot, 1)  # a render after the last event: its rows and toasts
    # Toasts are cleared now, while the main screen is on top: clear_notifications() later
    # only redraws the top screen's toasts, and a dialog shows the main screen's through.
    app.clear_notifications()
    # The thread list has the focus, on its first thread; the inbox follows that thread
    # (so the inbox cursor does not depend on the order items arrived in).
    assert app.threads_list.has_focus and app.threads_list.cursor == 0
    if scene.act is not None:
        await scene.act(pilot)
    await finish(pilot)


async def finish(pilot: Pilot) -> None:
    app = pilot.app
    await ticks(pilot, 1)
    for box in app.screen.query("Input, TextArea"):
        assert isinstance(box, Input | TextArea)
        box.cursor_blink = False  # a steady cursor, however long the scene took
    app.clear_notifications()
    await pilot.pause()
    await pilot.pause()
    stale = [s for s in app.screen_stack if s.query("Toast")]
    assert not stale, f"toasts left on {stale}: clear them before the screen above opens"


# --- the keys of each scene -----------------------------------------------------------------


def keys(*pressed: str) -> Act:
    async def act(pilot: Pilot) -> None:
        await pilot.press(*pressed)

    return act


async def move(pilot: Pilot, rows: RowList, index: int) -> None:
    """Up or down to the row at index."""
    delta = index - rows.cursor
    if delta:
        await pilot.press(*(["down"] * delta if delta > 0 else ["up"] * -delta))
    assert rows.cursor == index


async def inbox_to(pilot: Pilot, row: Callable[[TowerApp, str], bool]) -> None:
    """i, then up or down to the first inbox row wanted."""
    app = pilot.app
    assert isinstance(app, TowerApp)
    await pilot.press("i")
    rows = app.inbox_list.rows
    await move(pilot, app.inbox_list, next(i for i, key in enumerate(rows) if row(app, key)))


async def threads_to(pilot: Pilot, tid: str) -> None:
    """t (unless the thread list has the focus), then up or down to the thread."""
    app = pilot.app
    assert isinstance(app, TowerApp)
    if not app.threads_list.has_focus:
        await pilot.press("t")
    await move(pilot, app.threads_list, app.threads_list.rows.index(tid))


def item_of(thread: str) -> Callable[[TowerApp, str], bool]:
    def row(app: TowerApp, key: str) -> bool:
        item = app.state().inbox.get(key)
        return item is not None and item.thread == thread

    return row


def group_row(_app: TowerApp, key: str) -> bool:
    return key.startswith("g:")


def then(*acts: Act) -> Act:
    async def act(pilot: Pilot) -> None:
        for a in acts:
            await a(pilot)

    return act


def select_item(thread: str) -> Act:
    return lambda pilot: inbox_to(pilot, item_of(thread))


def select_thread(tid: str) -> Act:
    return lambda pilot: threads_to(pilot, tid)


def press_until(key: str, ready: Callable[[TowerApp], bool]) -> Act:
    async def act(pilot: Pilot) -> None:
        await pilot.press(key)
        app = pilot.app
        assert isinstance(app, TowerApp)
        await pilot_until(pilot, lambda: ready(app))

    return act


def screen_is(kind: type) -> Callable[[TowerApp], bool]:
    return lambda app: isinstance(app.screen, kind)


async def open_thread(pilot: Pilot) -> None:
    await pilot.press("enter")
    app = pilot.app
    await pilot_until(
        pilot,
        lambda: (
            isinstance(app.screen, ThreadScreen) and bool(label_text(app.screen.query_one("#head")))
        ),
    )


async def approve_and_open_files(pilot: Pilot) -> None:
    """a on revenue's write_file, wait until it and the queued threads finish, then w."""
    app = pilot.app
    assert isinstance(app, TowerApp)
    await select_item("revenue")(pilot)
    await pilot.press("a")
    await on_bus(pilot, revenue_written)
    await ticks(pilot, 1)
    await threads_to(pilot, "revenue")
    app.clear_notifications()  # "approved i2", on the main screen
    await pilot.press("w")
    await pilot_until(
        pilot, lambda: isinstance(app.screen, FilesScreen) and app.screen.loaded.is_set()
    )


async def choose_task(pilot: Pilot) -> None:
    """The spawn dialog, with the project's task `revenue` chosen as the template."""
    app = pilot.app
    await press_until("n", screen_is(SpawnDialog))(pilot)
    dialog = app.screen
    dialog.query_one("#template", Select).value = "revenue"
    await pilot_until(pilot, lambda: bool(label_text(dialog.query_one("#task-info", Label))))


async def palette(pilot: Pilot) -> None:
    app = pilot.app
    await pilot.press("colon")

    def listed() -> bool:
        screen = app.screen
        return (
            isinstance(screen, CommandPalette)
            and screen.has_class("-ready")
            and not screen._show_busy
        )

    await pilot_until(pilot, listed)


async def sessions(pilot: Pilot) -> None:
    """L, with the sessions' start and end times fixed in the log first: they are taken
    from the wall clock, not the app's clock (Supervisor.start, Store.end_session)."""
    app = pilot.app
    assert isinstance(app, TowerApp) and app.db is not None
    with contextlib.closing(sqlite3.connect(app.db, timeout=10)) as db, db:
        db.execute(
            "UPDATE sessions SET started = ?, ended = ? WHERE id = ?",
            (CLOCK - 3600, CLOCK - 3600 + 95, PAST),
        )
        db.execute("UPDATE sessions SET started = ? WHERE id = ?", (CLOCK, SESSION))
    await press_until("L", screen_is(SessionsScreen))(pilot)


async def past_session(pilot: Pilot) -> None:
    """The sessions list, on the recorded session (the live one, newest, comes first)."""
    await sessions(pilot)
    await pilot.press("down")


async def replay(pilot: Pilot) -> None:
    """Enter on the recorded session, then g to the event where its approval opened."""
    app = pilot.app
    await past_session(pilot)
    await pilot.press("enter")

    def opened() -> bool:
        return isinstance(app.screen, ReplayScreen) and app.screen.rp is not None

    await pilot_until(pilot, opened)
    screen = app.screen
    assert isinstance(screen, ReplayScreen) and screen.rp is not None
    rp = screen.rp
    at = next(seq for seq, mark in rp.marks if mark == "approval")
    await press_until("g", screen_is(TextDialog))(pilot)
    await pilot.press(*str(at), "enter")
    await pilot_until(pilot, lambda: app.screen is screen and rp.pos == at)


async def fork(pilot: Pilot) -> None:
    app = pilot.app
    await past_session(pilot)
    await pilot.press("f")

    def described() -> bool:
        screen = app.screen
        return isinstance(screen, ForkDialog) and bool(
            label_text(screen.query_one("#event", Label))
        )

    await pilot_until(pilot, described)


async def export(pilot: Pilot) -> None:
    await sessions(pilot)
    await press_until("e", screen_is(ExportDialog))(pilot)


SCENES: dict[str, Scene] = {
    # The main screen: as it opens (the first thread selected, its approval in the detail).
    "main": Scene(),
    "inbox_approval": Scene(select_item("revenue")),
    "group_selected": Scene(lambda p: inbox_to(p, group_row), project=GROUP, ready=group_ready),
    "marked_two": Scene(keys("i", "home", "space", "space")),
    "thread_nothing_waiting": Scene(select_thread("forecast-1")),
    # Screens.
    "thread_detail": Scene(then(select_thread("revenue"), open_thread)),
    "files": Scene(approve_and_open_files, fixed_dir=True),
    "help": Scene(keys("question_mark")),
    "policy": Scene(keys("o")),
    "sessions": Scene(sessions, past=True),
    "replay": Scene(replay, past=True),
    "palette": Scene(palette),
    # Dialogs.
    "kill_confirm": Scene(then(select_thread("revenue"), keys("x"))),
    "reply": Scene(then(select_item("pricing"), keys("r"))),
    "deny_reason": Scene(then(select_item("revenue"), keys("D"))),
    "edit_args": Scene(then(select_item("revenue"), keys("E"))),
    "allow_like": Scene(then(select_item("revenue"), keys("A"))),
    "raise_budget": Scene(then(select_item("revenue"), keys("b"))),
    "spawn": Scene(press_until("n", screen_is(SpawnDialog))),
    "spawn_task": Scene(choose_task),
    "fork": Scene(fork, past=True),
    "export": Scene(export, past=True),
    "quit_confirm": Scene(keys("q")),
}


# --- running a scene ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Dates are printed in local time: UTC here, wherever the tests run."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


class _FrozenMonotonic:
    """The time module, with a monotonic clock that never moves."""

    @staticmethod
    def monotonic() -> float:
        return 0.0

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.fixture(autouse=True)
def frozen_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An LLM call's duration (tower/core/llm.py) is measured on the wall clock and shown in
    a thread's cost per step: every call takes 0 s here."""
    monkeypatch.setattr(tower.core.llm, "time", _FrozenMonotonic())


@contextlib.contextmanager
def fixed_folder(project: Path) -> Iterator[tuple[Path, Path]]:
    """(project copy, db) under FIXED_DIR, held by one run at a time."""
    FIXED_DIR.mkdir(parents=True, exist_ok=True)
    with (FIXED_DIR.parent / f"{FIXED_DIR.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            shutil.rmtree(FIXED_DIR, ignore_errors=True)
            root = FIXED_DIR / "project"
            shutil.copytree(project, root)
            yield root, FIXED_DIR / "t.db"
        finally:
            shutil.rmtree(FIXED_DIR, ignore_errors=True)
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_past(tmp_path: Path, db: Path) -> None:
    """PAST, on the fixed clock an hour before the live session, approved headless."""
    sales = (MAIN / "ws" / "sales.csv").read_text(encoding="utf-8")
    root = write_project(tmp_path / "past", PAST_PROJECT, {"ws/sales.csv": sales})

    async def record() -> None:
        store = await Store.open(db)
        try:
            bus = Bus(store, clock=lambda: CLOCK - 3600)
            sup = Supervisor(
                load_project(root),
                bus,
                session_id=PAST,
                approve="all",
                workspaces_dir=tmp_path / "past-workspaces",
            )
            await sup.start()
            await asyncio.wait_for(sup.wait_idle(), WAIT_S)
            await sup.close("finished")
            assert bus.state.count(ThreadState.DONE) == 2
        finally:
            await store.close()

    asyncio.run(record())


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("name", list(SCENES))
def test_snapshot(snap_compare, tmp_path: Path, name: str, size: tuple[int, int]) -> None:
    scene = SCENES[name]
    with contextlib.ExitStack() as stack:
        if scene.fixed_dir:
            root, db = stack.enter_context(fixed_folder(scene.project))
        else:
            root, db = scene.project, tmp_path / "t.db"
        if scene.past:
            record_past(tmp_path, db)
        app = TowerApp(load_project(root), db, clock=lambda: CLOCK, session_id=SESSION, watch=False)

        async def run_before(pilot: Pilot) -> None:
            await start(pilot, scene)

        assert snap_compare(app, terminal_size=size, run_before=run_before)
