"""The fleet from the command line: `tower up` starts a project's session as a background
service, `ls` lists it, the steering verbs decide and spawn over its socket from scripts,
`down` stops it; a SIGKILLed service is listed as crashed and `tower up` resumes it with
nothing lost or billed twice; a SIGKILLed view never stops the fleet."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, db_events, one_line_error, tower, tower_cmd, tower_env
from tower.core.events import EventKind


@pytest.fixture
def fleet_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A private runtime folder (short: a socket path is at most 107 bytes), a copy of the
    tax_return sample and a database; every service still running is stopped after."""
    runtime = Path(tempfile.mkdtemp(prefix="tw-"))
    proj = tmp_path / "tax_return"
    shutil.copytree(REPO / "sample_projects" / "tax_return", proj)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    out = {"env": env, "proj": proj, "db": tmp_path / "t.db", "home": tmp_path}
    yield out
    listed = tower("ls", "--json", env=env)
    for row in json.loads(listed.stdout or "[]"):
        if row["status"] != "crashed":
            with_pid = int(row["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(with_pid, signal.SIGKILL)
    shutil.rmtree(runtime, ignore_errors=True)


def run(f: dict[str, Any], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return tower(*args, env=f["env"], home=f["home"])


def ls(f: dict[str, Any]) -> list[dict[str, Any]]:
    proc = run(f, "ls", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def inbox(f: dict[str, Any], session: str) -> list[dict[str, Any]]:
    proc = run(f, "inbox", session, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_inbox(f: dict[str, Any], session: str, pred: Any, what: str) -> list[dict[str, Any]]:
    """Polls the fleet's inbox through the CLI until pred(items) holds (each poll is a
    whole CLI round trip: this is the condition, not a sleep)."""
    for _ in range(600):
        items = inbox(f, session)
        if pred(items):
            return items
    raise AssertionError(f"timed out waiting for {what}: {items}")


def test_up_ls_steer_and_down_from_scripts(fleet_env: dict[str, Any]) -> None:
    f = fleet_env
    up = run(f, "up", f["proj"], "--db", f["db"])
    assert up.returncode == 0, up.stderr
    session = up.stdout.strip()
    # A second `up` reuses the running fleet.
    again = run(f, "up", f["proj"], "--db", f["db"])
    assert again.stdout.strip() == session and "already running" in again.stderr
    (row,) = ls(f)
    assert (row["session"], row["project"], row["status"]) == (session, "tax_return", "running")

    questions = wait_inbox(
        f, session, lambda items: sum(i["kind"] == "question" for i in items) == 3, "questions"
    )
    first, second, third = (i["item"] for i in questions)
    assert run(f, "reply", first, "Agree.").returncode == 0
    assert run(f, "reply", second, "Agree.", "--session", session[:10]).returncode == 0
    denied = run(f, "deny", third, "--reason", "ask me tomorrow", "--json")
    assert json.loads(denied.stdout) == {"item": third, "resolution": "denied"}
    # Refusals: one line, exit 2, and the fleet goes on.
    one_line_error(run(f, "approve", "i999"), "no running fleet has item 'i999'")
    one_line_error(run(f, "pause", "nobody"), "no running fleet has thread 'nobody'")
    one_line_error(run(f, "inbox", "1999"), "no running fleet '1999'")
    spawned = run(f, "spawn", session, "--prompt", "Say hello.", "--json")
    assert spawned.returncode == 0, spawned.stderr
    assert run(f, "pause", "nguyen").returncode == 0
    assert run(f, "resume", "nguyen").returncode == 0  # a fleet's thread, not a session
    assert run(f, "kill", json.loads(spawned.stdout)["thread"]).returncode == 0

    (row,) = ls(f)
    assert row["inbox"] >= 0 and row["cost_usd"] > 0
    # Progress is the same reading as the thread counts beside it: the killed thread has
    # ended; what is left is every thread that has not.
    p, by_state = row["progress"], row["threads"]
    ended = sum(n for s, n in by_state.items() if s in ("done", "failed", "killed", "skipped"))
    assert (p["ended"], p["total"]) == (ended, sum(by_state.values()) + row["not_started"])
    assert p["ended"] >= 1 and p["left"] == p["total"] - p["ended"]
    table = run(f, "ls").stdout
    assert "PROGRESS" in table and " ended" in table
    down = run(f, "down", session)
    assert down.returncode == 0 and down.stdout.strip() == f"stopped {session}"
    assert ls(f) == []
    events = db_events(f["db"], session)
    closed = [e.payload for e in events if e.kind is EventKind.INBOX_CLOSED]
    assert [(c["item"], c["resolution"]) for c in closed[:3]] == [
        (first, "answered"),
        (second, "answered"),
        (third, "denied"),
    ]
    assert closed[2]["text"] == "ask me tomorrow"
    pauses = [e.payload["requested"] for e in events if e.kind is EventKind.PAUSE_REQUESTED]
    assert pauses[:2] == [True, False]
    assert events[-1].kind is EventKind.SESSION_ENDED
    sessions = json.loads(run(f, "sessions", "--db", f["db"], "--json").stdout)
    assert sessions[0]["status"] in ("unfinished", "clean")


def test_a_sigkilled_service_is_listed_crashed_and_up_resumes_it(
    fleet_env: dict[str, Any],
) -> None:
    """SIGKILL of the service mid-run: `ls` says crashed; `tower up` resumes the same
    session; every event before the kill is still there, and no model call is made (or
    billed) twice."""
    f = fleet_env
    session = run(f, "up", f["proj"], "--db", f["db"]).stdout.strip()
    wait_inbox(f, session, lambda items: len(items) >= 2, "two items")
    (row,) = ls(f)
    os.kill(row["pid"], signal.SIGKILL)
    (row,) = ls(f)
    assert row["status"] == "crashed"
    before = db_events(f["db"], session)
    resumed = run(f, "up", f["proj"])
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == session and "resumed" in resumed.stderr
    (row,) = ls(f)
    assert row["status"] == "running"
    # Answer everything the resumed fleet asks until every thread has ended.
    for _ in range(200):
        items = inbox(f, session)
        for item in items:
            verb = "reply" if item["kind"] == "question" else "approve"
            extra = ["Agree."] if verb == "reply" else []
            run(f, verb, item["item"], *extra)
        (row,) = ls(f)
        if row.get("all_ended"):
            break
    assert row.get("all_ended"), row
    assert run(f, "down", session).returncode == 0
    after = db_events(f["db"], session)
    assert [(e.seq, e.kind) for e in after[: len(before)]] == [(e.seq, e.kind) for e in before]
    steps = collections.Counter(
        (e.thread, e.payload["step"]) for e in after if e.kind is EventKind.LLM_FINISHED
    )
    assert max(steps.values()) == 1
    done = [e for e in after if e.kind is EventKind.THREAD_STATE and e.payload["state"] == "done"]
    assert len({e.thread for e in done}) == 5


def test_a_killed_view_never_stops_the_fleet(fleet_env: dict[str, Any]) -> None:
    f = fleet_env
    session = run(f, "up", f["proj"], "--db", f["db"]).stdout.strip()
    (row,) = ls(f)
    sock = f["env"]["XDG_RUNTIME_DIR"] + f"/tower/{session}.sock"
    code = (
        "import asyncio, sys\n"
        "from tower.core.client import ServiceClient\n"
        "async def main():\n"
        f"    c = await ServiceClient.connect(__import__('pathlib').Path({sock!r}))\n"
        "    print('attached', flush=True)\n"
        "    while True:\n"
        "        await c.next_message()\n"
        "asyncio.run(main())\n"
    )
    view = subprocess.Popen(
        [tower_cmd()[0], "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        env=tower_env(f["env"], home=f["home"]),
    )
    assert view.stdout is not None and view.stdout.readline().strip() == "attached"
    view.send_signal(signal.SIGKILL)
    view.wait()
    view.stdout.close()
    (after,) = ls(f)
    assert (after["status"], after["pid"]) == ("running", row["pid"])
    assert wait_inbox(f, session, lambda items: len(items) >= 1, "an item")
    assert run(f, "down", session).returncode == 0


def test_up_on_a_project_that_cannot_run_is_one_line_and_starts_nothing(
    fleet_env: dict[str, Any], tmp_path: Path
) -> None:
    f = fleet_env
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tower.toml").write_text(
        '[project]\nname = "bad"\n[[agents]]\nname = "a"\ncascade = ["openai/gpt-4o-mini"]\n'
        '[[tasks]]\nid = "t"\nagent = "a"\nprompt = "x"\n'
    )
    proc = tower("up", bad, env=f["env"], home=f["home"], unset=["OPENAI_API_KEY"])
    one_line_error(proc, "agents[0].cascade[0]", "OPENAI_API_KEY")
    assert ls(f) == []
    one_line_error(run(f, "up", tmp_path / "missing"), "no such project folder")
    one_line_error(run(f, "down", "2026"), "no running fleet '2026'")
