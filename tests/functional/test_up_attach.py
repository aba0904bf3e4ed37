"""`tower run DIR` (and `tower`) as up + attach: the screen comes up at once, the fleet is
started in its own process (a real `tower serve`), the screen is a view of it, and leaving
the screen can leave the fleet running; the next `tower run` is a view of the same fleet."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fleets import fleet_place
from tests.fleets import ls as fleet_ls
from tests.helpers import db_events, tower
from tests.tui_harness import booted
from tower.core.events import EventKind
from tower.core.project import load_project
from tower.ui.app import TowerApp
from tower.ui.screens.dialogs import ChoiceDialog


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """tax_return in a private runtime folder; every fleet it started is killed after."""
    with fleet_place(tmp_path) as where:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(where["runtime"]))
        yield where


def ls(p: dict[str, Any]) -> list[dict[str, Any]]:
    return fleet_ls(p["env"])


def run_view(p: dict[str, Any], proj: Path | None = None) -> TowerApp:
    """What `tower run DIR` opens."""
    return TowerApp(load_project(proj or p["proj"]), p["db"], watch=False, up=True)


async def test_run_starts_a_fleet_and_the_screen_is_a_view_that_can_leave_it_running(
    place: dict[str, Any],
) -> None:
    p = place
    app = run_view(p)
    notes: list[str] = []
    first = app._tick

    def tick() -> None:  # what the budget bar says on each tick, from the first frame on
        notes.append(app.note)
        first()

    app._tick = tick  # type: ignore[method-assign]
    async with booted(app, p["db"], check_log=False) as t:
        # The screen was up (and said so) before the fleet it attached to.
        assert any(n.startswith("starting") for n in notes), notes
        (row,) = ls(p)
        session = row["session"]
        assert row["status"] == "running" and row["pid"] != os.getpid()
        assert t.app.sub_title == f"attached to {session}"
        assert t.app.session is None  # the core is not in this process
        await t.until(lambda: len(t.state().inbox) == 3, "the fleet's three questions")
        await t.press("q")
        choice = await t.screen_is(ChoiceDialog)
        assert session in choice.question
        await t.press("d")
        await t.until(lambda: not t.app.is_running, "the view leaves")
    (row,) = ls(p)
    assert (row["session"], row["status"]) == (session, "running")

    # `tower run` again: a view of the same fleet (not a second session), which says so.
    async with booted(run_view(p), p["db"], check_log=False) as t:
        await t.until(lambda: t.app.sub_title == f"attached to {session}", "attached")
        await t.until(
            lambda: any("already running" in n.message for n in t.toasts), "the reuse toast"
        )
        assert len(ls(p)) == 1
        assert len(t.state().inbox) == 3
        await t.press("q")
        await t.screen_is(ChoiceDialog)
        await t.press("s")
        await t.until(lambda: not t.app.is_running, "the view leaves")
    for _ in range(600):  # each a CLI round trip: until the service has flushed and exited
        if ls(p) == []:
            break
    assert ls(p) == []
    assert db_events(p["db"], session)[-1].kind is EventKind.SESSION_ENDED
    # One session in the log: the second view did not start another.
    starts = [e for e in db_events(p["db"], session) if e.kind is EventKind.SESSION_STARTED]
    assert len(starts) == 1


async def test_enter_opens_a_threads_transcript_in_a_view_of_a_fleet(
    place: dict[str, Any],
) -> None:
    """What the README's demo opens is a view of a fleet: enter on a thread there opens its
    transcript, read from the fleet's log, and keeps it live (it did nothing before)."""
    from textual.widgets import RichLog

    from tower.ui.screens.detail import ThreadScreen

    p = place
    async with booted(run_view(p), p["db"], check_log=False) as t:
        assert t.app.session is None  # the core is in the fleet's process
        await t.until(lambda: len(t.state().inbox) == 3, "the fleet's three questions")
        await t.press("t")
        chosen = t.threads.current
        assert chosen is not None
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == chosen
        log = screen.query_one(RichLog)
        await t.until(lambda: "── step 1 ·" in "\n".join(s.text for s in log.lines), "steps")
        text = "\n".join(s.text for s in log.lines)
        assert "task: Prepare the 2024 federal return" in text  # its spawn, from the log
        await t.press("escape")
        await t.until(lambda: not isinstance(t.app.screen, ThreadScreen), "back")
        await t.press("q")
        await t.screen_is(ChoiceDialog)
        await t.press("s")
        await t.until(lambda: not t.app.is_running, "the view leaves")


async def test_a_fleet_that_cannot_start_closes_the_screen_with_its_own_error(
    place: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    p = place
    toml = p["proj"] / "tower.toml"
    toml.write_text(toml.read_text().replace('"sim/small"', '"openai/gpt-4o-mini"'))
    saved = os.environ.pop("OPENAI_API_KEY", None)
    try:
        app = run_view(p)
        async with app.run_test() as pilot:
            for _ in range(3000):
                if not app.is_running:
                    break
                await pilot.pause(0.01)
    finally:
        if saved is not None:
            os.environ["OPENAI_API_KEY"] = saved
    assert app.return_code == 2
    err = " ".join(capsys.readouterr().err.split())  # as Rich wrapped it on exit
    assert "needs the environment variable OPENAI_API_KEY" in err and "Traceback" not in err
    assert ls(p) == []  # nothing left running or listed


def test_resume_on_a_running_fleet_attaches_to_it(
    place: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tower resume SESSION` while it runs as a fleet: one more view of it, not an error
    ("still running in another process") and not a second copy."""
    from tower import cli

    p = place
    up = tower("up", p["proj"], "--db", p["db"], env=p["env"])
    assert up.returncode == 0, up.stderr
    session = up.stdout.strip()
    opened: list[tuple[Path | None, bool]] = []

    def run(self: TowerApp, *args: Any, **kwargs: Any) -> None:
        opened.append((self.attach, self.up))

    monkeypatch.setattr(TowerApp, "run", run)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert cli.main(["resume", session[:15]]) == 0
    ((sock, up_mode),) = opened
    assert sock is not None and sock.name == f"{session}.sock" and not up_mode


async def test_tower_down_stops_a_fleet_a_still_open_screen_started(
    place: dict[str, Any],
) -> None:
    """The fleet is the starting screen's child: once stopped it must not linger as a
    zombie that `tower down` waits a minute for (the starter reaps it)."""
    p = place
    async with booted(run_view(p), p["db"], check_log=False) as t:
        await t.until(lambda: t.app.sub_title.startswith("attached to"), "attached")
        (row,) = ls(p)
        down = tower("down", row["session"], env=p["env"], timeout=30)
        assert (down.returncode, down.stdout.strip()) == (0, f"stopped {row['session']}")
        await t.until(lambda: t.toast(f"`tower up {p['proj']}` resumes"), "the gone toast")
        assert "has stopped · q leaves" in t.app.note
        await t.press("q")  # nothing to detach from: q leaves at once
        await t.until(lambda: not t.app.is_running, "the view leaves")


def test_a_process_that_exited_unreaped_is_not_alive() -> None:
    import subprocess

    from tower.core.service import pid_alive

    child = subprocess.Popen(["true"])
    stat = Path(f"/proc/{child.pid}/stat")
    for _ in range(100_000):  # until it has exited (a zombie: nobody has waited for it)
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(os.getpid())
