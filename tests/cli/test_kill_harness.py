"""SIGKILL at every event boundary, by a harness that watches the database from outside.

tower runs as the real CLI in its own process; nothing inside tower knows it is tested. The
harness reads the session's database as any reader may (SQLite's WAL lets it read while
tower writes), and once K events are committed it takes the database's write lock, so
tower's next commit waits, and kills tower with SIGKILL while it waits. The durable log then
ends at the first commit boundary at or after K (tower's writer commits what is pending, a
few events at a time); the files the threads wrote may run ahead of it, as after a real
crash. K starts at 0 (the session row exists, no event yet) and moves one past each durable
end in turn, so every commit boundary of a run is visited up to the session's end.
(tests/functional/test_resume.py cuts a recorded log after every single event, in process.)

Each killed session is resumed by the CLI and must end as the uninterrupted run did: every
task's thread done with the same answer, every task spawned once, the log contiguous with
the durable prefix untouched, and no recorded model call made twice.
"""

from __future__ import annotations

import collections
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import db_events, tower_cmd, tower_env, write_project

PROJECT = """
[project]
name = "kills"
seed = 7

[models."sim/small"]
latency_s = 0.02
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
cascade = ["sim/small"]
tools = ["list_dir", "write_file", "finish"]

[policy]
allow = ["list_dir", "write_file", "finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "note {n}"
repeat = 3
workspace = "ws"

[[tasks.script]]
say = "Looking."
tool = "list_dir"

[[tasks.script]]
tool = "write_file"
args = { path = "note.txt", content = "note {n}" }

[[tasks.script]]
tool = "finish"
args = { answer = "wrote {n}" }
"""


def _headless(*args: str, db: Path) -> list[str]:
    return tower_cmd(*args, "--headless", "--approve", "all", "--json", "--db", str(db))


ENDED = ("done", "failed", "killed")


def _committed(conn: sqlite3.Connection) -> int | None:
    """Events committed so far (None until the session row exists)."""
    try:
        if conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 0:
            return None
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    except sqlite3.OperationalError:  # the tables are being created
        return None


def _run_and_kill(root: Path, db: Path, k: int) -> int | None:
    """Runs the project and SIGKILLs tower once K events are committed, holding the write
    lock so no commit lands in between. Returns the durable event count, or None when the
    run finished before reaching K."""
    proc = subprocess.Popen(
        _headless("run", str(root), db=db),
        env=tower_env(home=root.parent),
        cwd=root.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not db.exists():
            if proc.poll() is not None:
                pytest.fail(f"tower exited {proc.returncode}: {proc.stderr.read().decode()}")
            time.sleep(0.001)  # polling the file system, not synchronising with tower
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            while True:
                n = _committed(conn)
                if n is not None and n >= k:
                    conn.execute("BEGIN IMMEDIATE")  # tower's next commit now waits
                    durable = _committed(conn)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    conn.execute("ROLLBACK")
                    return durable
                if proc.poll() is not None:
                    return None
                time.sleep(0.001)
        finally:
            conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _outcome(db: Path) -> dict[str, tuple[str, str]]:
    """Each thread's last state and answer, read from the log."""
    out: dict[str, tuple[str, str]] = {}
    for e in db_events(db):
        if e.kind == "thread_state" and e.thread is not None and e.payload["state"] in ENDED:
            out[e.thread] = (e.payload["state"], e.payload.get("answer") or "")
    return out


def test_sigkill_at_every_event_boundary_resumes_to_the_uninterrupted_outcome(tmp_path) -> None:
    root = write_project(tmp_path / "proj", PROJECT, {"ws/readme.txt": "hello\n"})
    ref_db = tmp_path / "ref.db"
    done = subprocess.run(
        _headless("run", str(root), db=ref_db),
        env=tower_env(home=tmp_path),
        capture_output=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    ref = db_events(ref_db)
    expected = _outcome(ref_db)
    assert expected == {f"t-{n}": ("done", f"wrote {n}") for n in (1, 2, 3)}
    last = next(e.seq for e in ref if e.kind == "session_ended") - 1
    durable_points: set[int] = set()
    k = 0
    while k <= last:
        db = tmp_path / f"kill{k}.db"
        durable = _run_and_kill(root, db, k)
        assert durable is not None, f"the run ended before {k} events were committed"
        before = db_events(db)
        assert [e.seq for e in before] == list(range(1, durable + 1))
        if any(e.kind == "session_ended" for e in before):
            break  # this run's log was complete before K (timing varies a little per run)
        durable_points.add(durable)
        (session,) = {e.payload["session"] for e in before if e.kind == "session_started"} or {
            sqlite3.connect(db).execute("SELECT id FROM sessions").fetchone()[0]
        }
        res = subprocess.run(
            _headless("resume", session, db=db),
            env=tower_env(home=tmp_path),
            capture_output=True,
            cwd=tmp_path,
        )
        assert res.returncode == 0, (k, durable, res.stderr.decode()[-2000:])
        summary = json.loads(res.stdout)
        assert summary["threads"] == {"done": 3, "failed": 0, "killed": 0}, (k, summary)
        after = db_events(db)
        assert [e.seq for e in after] == list(range(1, len(after) + 1)), k
        assert after[:durable] == before, k  # the durable prefix is untouched
        assert _outcome(db) == expected, (k, durable)
        calls = collections.Counter(
            (e.thread, e.payload["step"]) for e in after if e.kind == "llm_finished"
        )
        assert max(calls.values()) == 1, (k, calls)  # no recorded call made again
        spawned = [e.thread for e in after if e.kind == "thread_spawned"]
        assert sorted(spawned) == ["t-1", "t-2", "t-3"], (k, spawned)
        # The next kill lands past this durable point: every boundary is visited once.
        k = max(k, durable) + 1
    # Kills really landed all along the log, up to its last event.
    # Kills landed at the commits all along the runs, up to near their end. (Whether the
    # first lands before any event depends on timing; tests/functional/test_resume.py covers
    # that cut.)
    assert min(durable_points) <= last // 4 and max(durable_points) >= last * 3 // 4
    assert len(durable_points) >= 8, durable_points
