"""The harness of the pilot tests: TowerApp booted under Textual's pilot on a small project
of scripted `sim/instant` threads, a handle to what it shows and holds, and a condition wait.

Tests wait on conditions (`pilot_until`: the app's own `pilot.pause()` round trips, with an
overall cap that only fails a hung test), never on fixed sleeps, and leave through the app's
own exit, after which the SQLite log must hold every emitted event and a cleanly ended
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textual.geometry import Region
from textual.notifications import Notification, Notify
from textual.pilot import Pilot
from textual.widget import Widget
from textual.widgets import Select

from tests.helpers import WAIT_S, write_project
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.project import load_project
from tower.core.state import InboxItem, ThreadView, TowerState
from tower.ui.app import TowerApp
from tower.ui.screens.dialogs import SpawnDialog
from tower.ui.widgets.inbox import InboxList
from tower.ui.widgets.threads import ThreadList


async def pilot_until(
    pilot: Pilot[Any], pred: Callable[[], Any], what: str = "", timeout: float = WAIT_S
) -> None:
    """Yields to the app (its own message round trips) until pred() holds; fails, never
    hangs, after `timeout` seconds."""

    async def loop() -> None:
        while not pred():
            await pilot.pause()

    try:
        await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for: {what or pred}") from None


# --- projects -------------------------------------------------------------------------------

BASE = """
[project]
name = "tui"
retry_backoff_s = 0

[limits]
max_concurrent = {cap}

[[agents]]
name = "a"
cascade = ["sim/instant", "sim/small", "sim/large"]

[[agents]]
name = "b"
cascade = ["sim/instant"]
"""

# ask_human, then write_file (needs approval), then finish.
ASK = """
[[tasks]]
id = "{id}"
agent = "{agent}"
prompt = "{prompt}"
repeat = {repeat}
workspace = "ws"

[[tasks.script]]
say = "Need a decision."
tool = "ask_human"
args = {{ question = "Which year?" }}

[[tasks.script]]
say = "Writing the result."
tool = "write_file"
args = {{ path = "out.txt", content = "2025" }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "written" }}
"""

# write_file (needs approval), then finish.
WRITE = """
[[tasks]]
id = "{id}"
agent = "{agent}"
prompt = "{prompt}"
repeat = {repeat}

[[tasks.script]]
say = "Writing."
tool = "write_file"
args = {{ path = "out.txt", content = "original" }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "ok" }}
"""

FILES = {"ws/readme.txt": "hello\n"}


def task(template: str, id: str, repeat: int = 1, agent: str = "a", prompt: str = "do it") -> str:
    return template.format(id=id, repeat=repeat, agent=agent, prompt=prompt)


def project(*tasks: str, cap: int = 16, extra: str = "") -> str:
    return BASE.format(cap=cap) + extra + "".join(tasks)


# --- the harness ----------------------------------------------------------------------------


@dataclass
class Tui:
    """A running TowerApp and its pilot: what it holds, what it draws, and waits on it."""

    app: TowerApp
    pilot: Pilot[Any]
    db: Path
    toasts: list[Notification] = field(default_factory=list)

    # state
    def state(self) -> TowerState:
        return self.app.state()

    def view(self, tid: str) -> ThreadView:
        return self.state().threads[tid]

    def items(self, tid: str | None = None) -> list[InboxItem]:
        return [i for i in self.state().inbox.values() if tid is None or i.thread == tid]

    def workspace(self, tid: str) -> Path:
        assert self.app.sup is not None
        ws = self.app.sup.runs[tid].workspace
        assert ws is not None
        return ws.root

    async def events(self, tid: str | None) -> list[Event]:
        """The thread's events as the log has them (what the detail screen reads); with
        None, every event of the session."""
        if tid is not None:
            return await self.app.thread_events(tid)
        store, sup, core = self.app.store, self.app.sup, self.app.core
        assert store is not None and sup is not None and core is not None

        async def read() -> list[Event]:
            await store.flush()
            return [ev async for ev in store.events(sup.session_id)]

        return await core.run(read())

    # waiting
    async def until(self, pred: Callable[[], Any], what: str = "", timeout: float = WAIT_S) -> None:
        """Yields to the app until pred() holds; fails (never hangs) after timeout seconds."""
        await pilot_until(self.pilot, pred, what, timeout)

    async def ready(self, pred: Callable[[], Any], what: str = "") -> None:
        """until(pred), then let the screen catch up, as a human would look before a key."""
        await self.until(pred, what)
        await self.settle()

    async def settle(self) -> None:
        """Waits until the next UI tick after now has drawn (ticks run at 10 Hz)."""
        target = self.app.ticks + 2
        await self.until(lambda: self.app.ticks >= target, "two UI ticks")

    async def press(self, *keys: str) -> None:
        await self.pilot.press(*keys)

    async def screen_is(self, kind: type) -> Any:
        await self.until(lambda: isinstance(self.app.screen, kind), f"screen {kind.__name__}")
        return self.app.screen

    # what is drawn
    @property
    def threads(self) -> ThreadList:
        return self.app.query_one(ThreadList)

    @property
    def inbox(self) -> InboxList:
        return self.app.query_one(InboxList)

    def rows(self) -> list[str]:
        """The thread list's rows as drawn (render_line; line 0 is the header)."""
        tl = self.threads
        return [tl.render_line(y).text for y in range(1, len(tl.rows) + 1)]

    def row(self, tid: str) -> str:
        found = [r for r in self.rows() if f" {tid} " in r]
        assert len(found) == 1, (tid, self.rows())
        return found[0]

    def inbox_rows(self) -> list[str]:
        ib = self.inbox
        # Each row starts with a two-character lead (mark ✓, group ▸/▾, member ·).
        return [ib.render_line(y).text[2:] for y in range(1, len(ib.rows) + 1)]

    def toast_texts(self) -> list[str]:
        return [f"{n.title} | {n.message}" for n in self.toasts]

    def toast(self, text: str) -> bool:
        """Whether a toast so far said `text` (in its message)."""
        return any(text in str(n.message) for n in self.toasts)


def drawn(widget: Widget) -> str:
    """Everything a widget draws (border, title and content), as plain text."""
    width, height = widget.outer_size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, width, height)))


def assert_log_complete(t: Tui) -> None:
    """Every event the bus numbered is in the database; the session ended clean."""
    app = t.app
    assert app.closed
    assert app.session is not None and app.sup is not None
    with contextlib.closing(sqlite3.connect(t.db)) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM events WHERE session = ?", (app.sup.session_id,)
        ).fetchone()
        (max_seq,) = conn.execute(
            "SELECT max(seq) FROM events WHERE session = ?", (app.sup.session_id,)
        ).fetchone()
        status, ended = conn.execute(
            "SELECT status, ended FROM sessions WHERE id = ?", (app.sup.session_id,)
        ).fetchone()
        (last,) = conn.execute(
            "SELECT kind FROM events WHERE session = ? ORDER BY seq DESC LIMIT 1",
            (app.sup.session_id,),
        ).fetchone()
    assert count == max_seq == app.session.bus.seq > 0
    assert status == "clean" and ended is not None
    assert last == EventKind.SESSION_ENDED


@contextlib.asynccontextmanager
async def booted(app: TowerApp, db: Path, check_log: bool = True) -> AsyncIterator[Tui]:
    """Runs `app` (its log in `db`) under the pilot until it has booted; on the way out
    shuts it down and, with check_log, checks the log."""
    toasts: list[Notification] = []

    def hook(message: object) -> None:
        if isinstance(message, Notify):
            toasts.append(message.notification)

    async with app.run_test(size=(160, 48), message_hook=hook, notifications=True) as pilot:
        t = Tui(app, pilot, db, toasts)
        await t.until(app.booted.is_set, "the app boots")
        yield t
        if app.is_running:  # leave through the app's own exit, as q does
            await app.shutdown()
            app.exit(0)
            await t.until(lambda: not app.is_running, "the app exits")
    if check_log:
        assert_log_complete(t)


@contextlib.asynccontextmanager
async def tui(
    tmp_path: Path, toml: str, files: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[Tui]:
    """Boots the app on a project written to tmp_path/proj (FILES unless `files`), its log in
    tmp_path/t.db, not watching files unless kwargs say `watch=True`; see `booted`."""
    root = write_project(tmp_path / "proj", toml, FILES if files is None else files)
    db = tmp_path / "t.db"
    app = TowerApp(load_project(root), db, **{"watch": False, **kwargs})
    async with booted(app, db) as t:
        yield t


def waiting_on(t: Tui, n: int, kind: InboxKind | None = None) -> Callable[[], bool]:
    return lambda: (
        len([i for i in t.items() if kind is None or i.kind is kind]) == n
        and all(
            v.state in (ThreadState.WAITING, ThreadState.PAUSED, ThreadState.QUEUED)
            or v.state.ended
            for v in t.state().threads.values()
        )
    )


async def pick_task(t: Tui, dialog: SpawnDialog, row: int) -> None:
    """The task list (focused when the dialog opens on a project with tasks): open it, go
    down `row` options (the first is "none"), enter."""
    template = dialog.query_one("#template", Select)
    assert dialog.focused is template
    await t.press("enter")
    await t.until(lambda: template.expanded, "the task list opens")
    await t.press(*["down"] * row, "enter")
    await t.until(lambda: dialog.chosen is not None, "a task chosen")
