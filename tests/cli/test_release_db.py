"""A database written by an earlier release still lists, replays, exports and resumes.

tests/fixtures/release-1.db was written by the release of 2026-11-30 (before typed events)
through its CLI, and release-1.json holds what that release printed for it (see
tests/fixtures/make_release_db.py). Today's tower, reading a copy, must print the same: the
sessions list, each session's state at its end and at a middle event, its CSV export (columns
added since are allowed, at the end) and as
many JSONL lines as it has events; and resume the session a SIGKILL cut off to the end.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FIXTURES, REPO, tower

EXPECTED: dict[str, Any] = json.loads((FIXTURES / "release-1.json").read_text(encoding="utf-8"))
SESSIONS = list(EXPECTED["by_session"])


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A copy of the fixture, its project folders where this checkout has them."""
    copy = tmp_path / "release-1.db"
    shutil.copy(FIXTURES / "release-1.db", copy)
    with sqlite3.connect(copy) as conn:
        for sid, rel in conn.execute("SELECT id, project_dir FROM sessions").fetchall():
            conn.execute("UPDATE sessions SET project_dir = ? WHERE id = ?", (str(REPO / rel), sid))
        # The killed process's pid must never look alive on this machine.
        conn.execute("UPDATE sessions SET pid = 999999999 WHERE status = 'running'")
    return copy


def test_the_sessions_list_is_what_that_release_printed(tmp_path: Path, db: Path) -> None:
    listed = tower("sessions", "--db", str(db), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows == EXPECTED["sessions"]
    assert [r["status"] for r in rows] == ["clean", "clean", "crashed"]


def holds(got: Any, want: Any) -> bool:
    """`got` says all that `want` (that release's output) said: fields added since are
    allowed, a field changed or dropped is not."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and holds(got[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(holds, got, want))
    return got == want


def csv_holds(got: str, want: str) -> bool:
    """The CSV says all that release's said: the same rows, in order, each with that
    release's columns and values; columns added since (at the end) are allowed."""
    got_rows = list(csv.reader(io.StringIO(got)))
    want_rows = list(csv.reader(io.StringIO(want)))
    return len(got_rows) == len(want_rows) and all(
        g[: len(w)] == w for g, w in zip(got_rows, want_rows, strict=True)
    )


def test_csv_holds_allows_added_columns_only() -> None:
    old = "a,b\n1,2\n"
    assert csv_holds("a,b,c\n1,2,x\n", old)
    assert not csv_holds("a,c,b\n1,x,2\n", old)
    assert not csv_holds("a,b\n1,3\n", old)
    assert not csv_holds("a,b\n1,2\n1,2\n", old)


def test_holds_allows_added_fields_only() -> None:
    old = {"a": 1, "t": [{"x": 1}]}
    assert holds({"a": 1, "b": 2, "t": [{"x": 1, "y": 0}]}, old)
    assert not holds({"a": 2, "t": [{"x": 1}]}, old)
    assert not holds({"t": [{"x": 1}]}, old)
    assert not holds({"a": 1, "t": [{"x": 1}, {"x": 2}]}, old)


@pytest.mark.parametrize("session", SESSIONS)
def test_replay_and_export_print_what_that_release_printed(
    tmp_path: Path, db: Path, session: str
) -> None:
    want = EXPECTED["by_session"][session]
    state = tower("replay", session, "--db", str(db), "--print-state", "--json")
    assert state.returncode == 0, state.stderr
    assert holds(json.loads(state.stdout), want["state"])
    middle = str(want["middle"])
    at = tower("replay", session, "--db", str(db), "--print-state", "--json", "--at", middle)
    assert holds(json.loads(at.stdout), want["state_at_middle"])
    table = tower("export", session, "--db", str(db), "--format", "csv")
    assert table.returncode == 0 and csv_holds(table.stdout, want["csv"]), table.stderr
    jsonl = tower("export", session, "--db", str(db), "--format", "jsonl")
    lines = jsonl.stdout.splitlines()
    assert len(lines) == want["jsonl_lines"] and all(json.loads(line) for line in lines)


def test_the_session_that_release_lost_in_a_crash_resumes_to_the_end(
    tmp_path: Path, db: Path
) -> None:
    (crashed,) = [r["id"] for r in EXPECTED["sessions"] if r["status"] == "crashed"]
    before = EXPECTED["by_session"][crashed]["jsonl_lines"]
    res = tower("resume", crashed, "--db", str(db), "--headless", "--approve", "all", home=tmp_path)
    assert res.returncode == 0, res.stderr
    with sqlite3.connect(db) as conn:
        events = [
            (kind, thread, json.loads(p))
            for kind, thread, p in conn.execute(
                "SELECT kind, thread, payload FROM events WHERE session = ? ORDER BY seq",
                (crashed,),
            )
        ]
        status = conn.execute("SELECT status FROM sessions WHERE id = ?", (crashed,)).fetchone()
    assert len(events) > before and status == ("clean",)
    answers = {
        t: p.get("answer")
        for kind, t, p in events
        if kind == "thread_state" and p["state"] == "done"
    }
    assert answers == {f"note-{n}": f"wrote {n}" for n in (1, 2, 3, 4)}
    assert events[-1][0] == "session_ended"
