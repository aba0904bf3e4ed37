"""The sessions list (`L`): rows and honest statuses, enter replays in-process, `e` exports,
`r` resumes and `f` forks by handing the next session to the CLI; `tower sessions` agrees.

Two sessions are recorded headless first on a tiny sim project: one that finished, one
stopped while a thread waited for the human (as a quit does). Then the TUI boots on the same
log, starting a third, live session whose `ask` thread waits in the inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, Label, Select

from tests.helpers import tower, write_project
from tests.tui_harness import Tui, booted
from tower.core.events import Event, EventKind
from tower.core.project import load_project
from tower.core.session import run_headless
from tower.core.store import Store
from tower.ui.app import TowerApp
from tower.ui.replay_app import ReplayScreen
from tower.ui.screens.dialogs import ConfirmDialog
from tower.ui.screens.sessions import (
    ExportDialog,
    ForkDialog,
    Handoff,
    SessionsScreen,
    SessionTable,
)

PROJECT = """
[project]
name = "ses"
retry_backoff_s = 0

[[agents]]
name = "a"
cascade = ["sim/instant"]

[[tasks]]
id = "fin"
agent = "a"
prompt = "finish at once"

[[tasks.script]]
tool = "finish"
args = { answer = "done" }

[[tasks]]
id = "ask"
agent = "a"
prompt = "ask first"

[[tasks.script]]
say = "Need a decision."
tool = "ask_human"
args = { question = "Which year?" }

[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


@dataclass
class Recorded:
    root: Path
    db: Path
    finished: str  # every thread done: clean
    quit: str  # stopped with `ask` waiting: unfinished
    events: dict[str, list[Event]] = field(default_factory=dict)


async def _read(db: Path, session: str) -> list[Event]:
    store = await Store.open(db)
    try:
        return [ev async for ev in store.events(session)]
    finally:
        await store.close()


@pytest.fixture
async def recorded(tmp_path: Path) -> Recorded:
    root = write_project(tmp_path / "proj", PROJECT)
    db = tmp_path / "t.db"
    finished = await run_headless(load_project(root), db, "all")
    assert finished.summary["threads"]["done"] == 2

    stop = asyncio.Event()
    seen: set[str] = set()

    def on_event(ev: Event) -> None:  # stop once `fin` is done and `ask` waits for a person
        if ev.kind is EventKind.THREAD_STATE and ev.payload["state"] == "done":
            seen.add("done")
        if ev.kind is EventKind.INBOX_OPENED:
            seen.add("asked")
        if seen == {"done", "asked"}:
            stop.set()

    quit_ = await run_headless(load_project(root), db, None, on_event, stop=stop)
    assert quit_.interrupted
    rec = Recorded(root, db, finished.summary["session"], quit_.summary["session"])
    for s in (rec.finished, rec.quit):
        rec.events[s] = await _read(db, s)
    return rec


async def sessions(t: Tui) -> SessionsScreen:
    await t.press("L")
    return await t.screen_is(SessionsScreen)


async def pick(t: Tui, screen: SessionsScreen, session: str) -> None:
    """Moves the list's cursor to a session, with the keys."""
    table = screen.query_one(SessionTable)
    await t.press(*["up"] * table.row_count)
    for _ in range(table.row_count):
        row = screen.selected()
        if row is not None and row.id == session:
            return
        await t.press("down")
    raise AssertionError(f"{session} not in the list")


@contextlib.asynccontextmanager
async def tui(rec: Recorded) -> AsyncIterator[Tui]:
    """The TUI on the recorded log, its own session live with `ask` waiting."""
    app = TowerApp(load_project(rec.root), rec.db, watch=False, offer_resume=False)
    async with booted(app, rec.db, check_log=False) as t:
        await t.until(
            lambda: (
                any(i.thread == "ask" for i in app.state().inbox.values())
                and app.state().threads["fin"].state == "done"
            ),
            "fin done and ask waiting",
        )
        yield t


def cells(screen: SessionsScreen) -> list[list[str]]:
    table = screen.query_one(SessionTable)
    return [[str(c) for c in table.get_row_at(y)] for y in range(table.row_count)]


async def test_list_shows_sessions_newest_first_with_honest_status(recorded: Recorded) -> None:
    async with tui(recorded) as t:
        screen = await sessions(t)
        assert t.app.sup is not None
        live = t.app.sup.session_id
        rows = cells(screen)
        assert [r[0] for r in rows] == [live, recorded.quit, recorded.finished]
        assert [r[1] for r in rows] == ["ses"] * 3
        statuses = [r[4] for r in rows]
        assert statuses == ["live (this one)", "unfinished", "clean"]
        assert rows[1][5] == "1/0/1" and rows[2][5] == "2/0/0"  # done/failed/unfinished
        assert rows[0][5] == "1/0/1"  # the live one: fin done, ask waiting
        hint = str(screen.query_one("#hint", Label).render())
        for key in ("enter replay", "f fork", "e export", "escape close"):
            assert key in hint
        await pick(t, screen, recorded.quit)
        hint = str(screen.query_one("#hint", Label).render())
        assert recorded.quit in hint and "r resume 1 unfinished" in hint
        await t.pilot.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))


async def test_enter_replays_in_process_and_escape_returns_to_the_live_tower(
    recorded: Recorded,
) -> None:
    async with tui(recorded) as t:
        screen = await sessions(t)
        await pick(t, screen, recorded.quit)
        await t.pilot.press("enter")
        replay = await t.screen_is(ReplayScreen)
        await t.until(lambda: replay.rp is not None, "the replay opens")
        rp = replay.rp
        events = recorded.events[recorded.quit]
        assert rp.session == recorded.quit and rp.last == len(events)
        assert f"event 1/{len(events)}" in str(replay.query_one("#timeline").render())
        await t.pilot.press("g")
        await t.pilot.press(*f"#{len(events)}", "enter")
        await t.until(lambda: rp.pos == len(events), "the end of the session")
        assert set(replay.state().threads) == {"fin", "ask"}
        assert replay.state().threads["ask"].state == "waiting"
        await t.pilot.press("a")  # the live tower's verbs do not reach through the replay
        await t.pilot.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))
        assert t.app.is_running and not t.app.closed
        assert any(i.thread == "ask" for i in t.app.state().inbox.values())  # still waiting


async def test_export_writes_the_sessions_events(
    recorded: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    async with tui(recorded) as t:
        screen = await sessions(t)
        await pick(t, screen, recorded.quit)
        await t.pilot.press("e")
        dialog = await t.screen_is(ExportDialog)
        path = dialog.query_one("#path", Input)
        assert path.value == f"./{recorded.quit}.jsonl"
        await t.pilot.press("enter")
        await t.until(lambda: t.toast(f"{recorded.quit}.jsonl"), "the export toast")
        events = recorded.events[recorded.quit]
        assert t.toast(f"wrote {len(events)} events")
        lines = (out / f"{recorded.quit}.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == [ev.to_dict() for ev in events]
        # csv: the default path follows the format
        await t.screen_is(SessionsScreen)
        await t.pilot.press("e")
        dialog = await t.screen_is(ExportDialog)
        dialog.query_one("#format", Select).value = "csv"
        path = dialog.query_one("#path", Input)
        await t.until(lambda: path.value == f"./{recorded.quit}.csv", "the csv path")
        path.focus()
        await t.pilot.press("enter")
        await t.until(lambda: t.toast("wrote 2 threads"), "the csv toast")
        text = (out / f"{recorded.quit}.csv").read_text(encoding="utf-8")
        assert text.splitlines()[0].startswith("thread,") and len(text.splitlines()) == 3


async def test_resume_refuses_the_live_and_ended_sessions_and_hands_off_an_unfinished_one(
    recorded: Recorded,
) -> None:
    async with tui(recorded) as t:
        screen = await sessions(t)
        assert t.app.sup is not None
        await pick(t, screen, t.app.sup.session_id)
        await t.pilot.press("r")
        await t.until(lambda: t.toast("is the live session"), "live session toast")
        await pick(t, screen, recorded.finished)
        await t.pilot.press("r")
        await t.until(lambda: t.toast("nothing to resume"), "nothing to resume toast")
        await pick(t, screen, recorded.quit)
        await t.pilot.press("r")
        dialog = await t.screen_is(ConfirmDialog)
        assert "1 running thread(s)" in dialog.question and recorded.quit in dialog.question
        await t.pilot.press("n")  # no: stay
        await t.screen_is(SessionsScreen)
        assert t.app.is_running
        await t.pilot.press("r")
        await t.screen_is(ConfirmDialog)
        await t.pilot.press("y")
        await t.until(lambda: not t.app.is_running, "the app exits")
    assert t.app.return_value == Handoff(recorded.quit)
    assert t.app.closed
    store = await Store.open(recorded.db)
    try:
        rows = {r.id: r for r in await store.list_sessions()}
    finally:
        await store.close()
    assert rows[t.app.sup.session_id].status == "unfinished"  # the one we left


async def test_fork_dialog_shows_the_event_and_hands_off_a_fork(recorded: Recorded) -> None:
    events = recorded.events[recorded.quit]
    asked = next(ev for ev in events if ev.kind is EventKind.INBOX_OPENED)
    async with tui(recorded) as t:
        screen = await sessions(t)
        await pick(t, screen, recorded.quit)
        await t.pilot.press("f")
        dialog = await t.screen_is(ForkDialog)
        seq = dialog.query_one("#seq", Input)
        assert seq.value == str(len(events))
        label = dialog.query_one("#event", Label)
        title = str(dialog.query(Label).first().render())
        assert f"1–{len(events)}" in title
        await t.until(
            lambda: f"event {len(events)}: session_ended" in str(label.render()), "last event"
        )
        seq.value = str(asked.seq)
        await t.until(
            lambda: f"event {asked.seq}: inbox_opened · thread ask" in str(label.render()),
            "the event at the chosen seq",
        )
        seq.value = "0"
        await t.until(lambda: "1 to" in str(dialog.query_one("#error", Label).render()))
        seq.value = str(asked.seq)
        seq.focus()
        await t.pilot.press("enter")
        await t.screen_is(ConfirmDialog)
        await t.pilot.press("y")
        await t.until(lambda: not t.app.is_running, "the app exits")
    assert t.app.return_value == Handoff(recorded.quit, fork_at=asked.seq)


async def test_fork_refuses_an_event_after_which_every_thread_had_ended(
    recorded: Recorded,
) -> None:
    async with tui(recorded) as t:
        screen = await sessions(t)
        await pick(t, screen, recorded.finished)
        await t.pilot.press("f")
        dialog = await t.screen_is(ForkDialog)
        # A finished session is offered the moment before its last thread ended, not its end.
        box = dialog.query_one(Input)
        assert box.value == str(dialog.default) and 1 <= dialog.default < dialog.last
        ended = [
            e.seq
            for e in recorded.events[recorded.finished]
            if e.kind is EventKind.THREAD_STATE and e.payload["state"] in ("done", "failed")
        ]
        assert dialog.default == max(ended) - 1
        box.value = str(dialog.last)  # its very end: nothing would continue
        await t.pilot.press("enter")
        await t.until(lambda: t.toast("nothing"), "a refusal")
        assert t.app.is_running


# --- the CLI ---------------------------------------------------------------------------------


def test_sessions_cli_reports_unfinished(recorded: Recorded) -> None:
    def sessions(*args: str) -> str:
        proc = tower("sessions", "--db", str(recorded.db), *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    rows = {r["id"]: r for r in json.loads(sessions("--json"))}
    assert rows[recorded.quit]["status"] == "unfinished"
    assert rows[recorded.finished]["status"] == "clean"
    lines = sessions().splitlines()
    quit_line = next(line for line in lines if line.startswith(recorded.quit))
    assert " unfinished " in quit_line and " 1/0/1 " in quit_line
    with sqlite3.connect(recorded.db) as conn:  # derived when listed, never rewritten
        stored = conn.execute("SELECT status FROM sessions WHERE id = ?", (recorded.quit,))
        assert stored.fetchone()[0] == "clean"


def _fake_tui(monkeypatch: pytest.MonkeyPatch, results: list[Any]) -> list[str | None]:
    """TowerApp.run replaced: each run records the session it resumes and returns the next
    result, as if the person had pressed keys; the terminal checks pass."""
    opened: list[str | None] = []

    def run(self: TowerApp, *args: Any, **kwargs: Any) -> None:
        opened.append(self.resume_id)
        self._return_value = results.pop(0) if results else None

    monkeypatch.setattr(TowerApp, "run", run)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    return opened


def test_cli_opens_the_tui_on_a_resumed_session(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tower import cli

    opened = _fake_tui(monkeypatch, [Handoff(recorded.quit)])
    assert cli._open_tui(load_project(recorded.root), str(recorded.db)) == 0
    assert opened == [None, recorded.quit]


def test_cli_forks_then_opens_the_tui_on_the_fork(
    recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tower import cli

    events = recorded.events[recorded.quit]
    at = next(ev.seq for ev in events if ev.kind is EventKind.INBOX_OPENED)
    opened = _fake_tui(monkeypatch, [Handoff(recorded.quit, fork_at=at)])
    assert cli._open_tui(load_project(recorded.root), str(recorded.db)) == 0
    assert opened[0] is None and len(opened) == 2
    fork = opened[1]
    assert fork not in (None, recorded.quit, recorded.finished)
    with sqlite3.connect(recorded.db) as conn:
        meta = conn.execute("SELECT meta FROM sessions WHERE id = ?", (fork,)).fetchone()[0]
    assert json.loads(meta) == {"forked_from": recorded.quit, "at": at}
    copied = asyncio.run(_read(recorded.db, fork))
    assert [(e.seq, e.kind, e.thread) for e in copied] == [
        (e.seq, e.kind, e.thread) for e in events[:at]
    ]
    assert copied[0].payload["session"] == fork
