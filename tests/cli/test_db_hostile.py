"""Damaged and foreign databases (issue 11, point 6).

tower marks its database (application_id, user_version) and refuses to write into a SQLite
file that is not its own; a database of an earlier release (unmarked) is recognised by its
tables and upgraded. A damaged log (bad JSON, unknown kind, missing field, a gap in the
numbering, a dropped table) is one line naming the session and the event, exit 2, never a
traceback, and the file is left byte for byte as it was.

Every damage is made with the sqlite3 module on a database written by a real headless run,
and read back through the real CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, one_line_error, tower, write_project
from tower.core.project import load_project
from tower.core.replay import Replayer
from tower.core.session import run_headless
from tower.core.store import APPLICATION_ID, SCHEMA, SCHEMA_VERSION, Store, StoreError

TINY = """
[project]
name = "tiny"
[[agents]]
name = "a"
cascade = ["sim/instant"]
[[tasks]]
id = "one"
agent = "a"
prompt = "answer"
[[tasks.script]]
say = "Looking."
tool = "finish"
args = { answer = "ok" }
[[tasks]]
id = "two"
agent = "a"
prompt = "answer too"
[[tasks.script]]
say = "Also looking."
tool = "finish"
args = { answer = "ok too" }
"""


def fingerprint(db: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime and the files beside it (a -wal appearing is a change)."""
    return db.read_bytes(), db.stat().st_mtime_ns, sorted(p.name for p in db.parent.iterdir())


def sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(a database written by a real headless run, its project, the session id)."""
    root = tmp_path_factory.mktemp("recorded")
    project_dir = write_project(root / "tiny", TINY)
    db = root / "db" / "tower.db"
    result = asyncio.run(run_headless(load_project(project_dir), db, "all"))
    assert all(t.state == "done" for t in result.state.threads.values())
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    return db, project_dir, result.summary["session"]


@pytest.fixture
def copy(recorded, tmp_path: Path) -> tuple[Path, str]:
    db, _project, session = recorded
    dst = tmp_path / "copy" / "tower.db"
    dst.parent.mkdir()
    shutil.copyfile(db, dst)
    return dst, session


def seq_of(db: Path, session: str, kind: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT min(seq) FROM events WHERE session = ? AND kind = ?", (session, kind)
        ).fetchone()
    conn.close()
    assert row[0] is not None, kind
    return int(row[0])


# --- the recorded database is tower's ------------------------------------------------------


def test_a_run_marks_its_database(recorded) -> None:
    db, _project, _session = recorded
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    assert int.from_bytes(b"TOWR", "big") == APPLICATION_ID


def test_an_undamaged_copy_reads_and_stays_unchanged(copy) -> None:
    db, session = copy
    before = fingerprint(db)
    proc = tower("replay", session, "--print-state", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "2 done" in proc.stdout
    assert tower("export", session, "--format", "jsonl", "--db", str(db)).returncode == 0
    assert tower("sessions", "--db", str(db)).returncode == 0
    assert fingerprint(db) == before


# --- damaged logs ----------------------------------------------------------------------------


def bad_json(db: Path, session: str) -> tuple[int, str, str]:
    seq = seq_of(db, session, "llm_finished")
    sql(
        db,
        f"UPDATE events SET payload = '{{\"call\": 1, '"
        f" WHERE session = '{session}' AND seq = {seq}",
    )
    return seq, "llm_finished", "payload is not valid JSON"


def not_an_object(db: Path, session: str) -> tuple[int, str, str]:
    seq = seq_of(db, session, "thread_state")
    sql(db, f"UPDATE events SET payload = '[1, 2]' WHERE session = '{session}' AND seq = {seq}")
    return seq, "thread_state", "not a JSON object"


def unknown_kind(db: Path, session: str) -> tuple[int, str, str]:
    seq = seq_of(db, session, "llm_started")
    sql(
        db, f"UPDATE events SET kind = 'llm_teleported' WHERE session = '{session}' AND seq = {seq}"
    )
    return seq, "llm_teleported", "unknown event kind 'llm_teleported'"


def missing_field(db: Path, session: str) -> tuple[int, str, str]:
    seq = seq_of(db, session, "thread_spawned")
    sql(
        db,
        f"UPDATE events SET payload = json_remove(payload, '$.agent')"
        f" WHERE session = '{session}' AND seq = {seq}",
    )
    return seq, "thread_spawned", "no field 'agent'"


def seq_gap(db: Path, session: str) -> tuple[int, str, str]:
    seq = seq_of(db, session, "llm_delta")
    sql(db, f"DELETE FROM events WHERE session = '{session}' AND seq = {seq}")
    return seq, "missing", f"jumps from {seq - 1} to {seq + 1}"


def first_event_gone(db: Path, session: str) -> tuple[int, str, str]:
    sql(db, f"DELETE FROM events WHERE session = '{session}' AND seq = 1")
    return 1, "missing", "jumps from 0 to 2"


DAMAGES: dict[str, Callable[[Path, str], tuple[int, str, str]]] = {
    "bad_json": bad_json,
    "not_an_object": not_an_object,
    "unknown_kind": unknown_kind,
    "missing_field": missing_field,
    "seq_gap": seq_gap,
    "first_event_gone": first_event_gone,
}

COMMANDS = {
    "print_state": lambda s, db: ("replay", s, "--print-state", "--db", db),
    "print_state_json": lambda s, db: ("replay", s, "--print-state", "--json", "--db", db),
    "export_jsonl": lambda s, db: ("export", s, "--format", "jsonl", "--db", db),
    "export_csv": lambda s, db: ("export", s, "--format", "csv", "--db", db),
    "resume": lambda s, db: ("resume", s, "--headless", "--approve", "all", "--db", db),
    "sessions": lambda s, db: ("sessions", "--db", db),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_log_is_one_line_naming_session_and_event(copy, damage) -> None:
    db, session = copy
    seq, kind, why = DAMAGES[damage](db, session)
    assert not Path(f"{db}-wal").exists()
    before = fingerprint(db)
    for name, command in COMMANDS.items():
        proc = tower(*command(session, str(db)))
        line = one_line_error(proc, f"session {session}", f"event {seq} ({kind})", why)
        assert str(db) in line, (name, line)
        assert proc.stdout == "", (name, proc.stdout)
        assert fingerprint(db) == before, f"{name} changed the database"


def test_a_field_of_the_wrong_type_is_named_too(copy) -> None:
    db, session = copy
    seq = seq_of(db, session, "llm_finished")
    sql(
        db,
        f"UPDATE events SET payload = json_set(payload, '$.cost_usd', 'lots')"
        f" WHERE session = '{session}' AND seq = {seq}",
    )
    before = fingerprint(db)
    for command in ("print_state", "export_csv"):
        proc = tower(*COMMANDS[command](session, str(db)))
        one_line_error(
            proc, f"session {session}", f"event {seq} (llm_finished)", "cannot be applied"
        )
    assert fingerprint(db) == before


def test_a_dropped_events_table_is_named_and_never_recreated(copy) -> None:
    db, session = copy
    sql(db, "DROP TABLE events")
    before = fingerprint(db)
    for name, command in COMMANDS.items():
        proc = tower(*command(session, str(db)))
        line = one_line_error(proc, str(db), "events table is missing", session)
        assert "re-create" in line, (name, line)
        assert fingerprint(db) == before, f"{name} changed the database"
    # Writing a new run into it is refused as well: the table is not silently re-created.
    _ = tower("run", str(REPO / "sample_projects" / "code_review"), "--headless", "--db", str(db))
    assert fingerprint(db) == before
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert "events" not in tables


async def test_the_replay_screen_refuses_a_damaged_log_on_open(copy) -> None:
    """The TUI's Replayer checks the whole log when it opens, not when a scrub reaches it."""
    db, session = copy
    seq, kind, why = bad_json(db, session)
    before = fingerprint(db)
    store = await Store.open(db)
    try:
        replayer = Replayer(store, session)
        with pytest.raises(StoreError) as info:
            await replayer.open()
    finally:
        await store.close()
    assert f"session {session}: event {seq} ({kind}): {why}" in str(info.value)
    assert fingerprint(db) == before


async def test_a_scrub_through_a_gap_names_the_missing_event(copy) -> None:
    """Stepping forward (without the open-time check) still stops at the gap, by seq."""
    db, session = copy
    seq, _kind, _why = seq_gap(db, session)
    store = await Store.open(db)
    try:
        with pytest.raises(StoreError, match=rf"session {session}: event {seq} \(missing\)"):
            [ev async for ev in store.events(session)]
        replayer = Replayer(store, session)
        with pytest.raises(StoreError, match=rf"event {seq} "):
            await replayer.forward(10_000)
    finally:
        await store.close()


# --- foreign files -------------------------------------------------------------------------


def foreign_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE contacts (name TEXT, phone TEXT);"
        "CREATE TABLE notes (body TEXT);"
        "INSERT INTO contacts VALUES ('Ada', '555');"
    )
    conn.commit()
    conn.close()
    return path


def assert_untouched_journal(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_another_programs_database_is_refused_and_left_as_it_was(recorded, tmp_path) -> None:
    _db, project_dir, _session = recorded
    db = foreign_db(tmp_path / "other" / "foreign.db")
    before = fingerprint(db)
    proc = tower("run", str(project_dir), "--headless", "--db", str(db))
    one_line_error(proc, str(db), "not a tower database", "contacts, notes")
    assert fingerprint(db) == before
    proc = tower("sessions", "--db", str(db))
    one_line_error(proc, str(db), "not a tower database", "contacts, notes")
    proc = tower("replay", "x", "--print-state", "--db", str(db))
    one_line_error(proc, str(db), "not a tower database")
    assert fingerprint(db) == before
    assert_untouched_journal(db)
    with sqlite3.connect(db) as conn:
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
    conn.close()
    assert tables == ["contacts", "notes"]


def test_a_database_with_tower_tables_and_another_table_is_refused(tmp_path) -> None:
    db = tmp_path / "mixed.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA + "CREATE TABLE extra (x);")
    conn.close()
    before = fingerprint(db)
    proc = tower("sessions", "--db", str(db))
    one_line_error(proc, str(db), "not a tower database", "extra")
    assert fingerprint(db) == before


def test_another_application_id_is_refused(recorded, tmp_path) -> None:
    _db, project_dir, _session = recorded
    db = tmp_path / "app.db"
    sql(db, "PRAGMA application_id = 1234", "CREATE TABLE t (x)")
    before = fingerprint(db)
    proc = tower("run", str(project_dir), "--headless", "--db", str(db))
    one_line_error(proc, str(db), "not a tower database", "application_id")
    assert fingerprint(db) == before
    assert_untouched_journal(db)


def test_a_newer_towers_database_is_refused(copy) -> None:
    db, session = copy
    sql(db, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = fingerprint(db)
    proc = tower("replay", session, "--print-state", "--db", str(db))
    one_line_error(
        proc,
        str(db),
        f"written by a newer tower (schema {SCHEMA_VERSION + 1}, this one reads up to"
        f" {SCHEMA_VERSION})",
    )
    one_line_error(tower("sessions", "--db", str(db)), "newer tower")
    assert fingerprint(db) == before


@pytest.mark.parametrize(
    "content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 200]
)
def test_a_file_that_is_not_sqlite_is_refused_untouched(recorded, tmp_path, content) -> None:
    _db, project_dir, _session = recorded
    db = tmp_path / "notes.txt"
    db.write_bytes(content)
    before = fingerprint(db)
    one_line_error(tower("sessions", "--db", str(db)), str(db))
    one_line_error(tower("run", str(project_dir), "--headless", "--db", str(db)), str(db))
    assert fingerprint(db) == before


# --- an earlier release's database -----------------------------------------------------------


def test_an_earlier_releases_database_is_upgraded_and_readable(copy) -> None:
    """Unmarked, and without the snapshots table that later releases added."""
    db, session = copy
    sql(db, "PRAGMA application_id = 0", "PRAGMA user_version = 0", "DROP TABLE snapshots")
    proc = tower("sessions", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert session in proc.stdout
    proc = tower("replay", session, "--print-state", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    assert "2 done" in proc.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"sessions", "events", "snapshots"} <= tables


def test_an_earlier_releases_empty_database_takes_a_new_run(recorded, tmp_path) -> None:
    _db, project_dir, _session = recorded
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)  # the tables as tower creates them, without the marks
    conn.close()
    proc = tower("run", str(project_dir), "--headless", "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1
    conn.close()


async def test_a_new_file_is_created_marked(tmp_path) -> None:
    db = tmp_path / "new.db"
    store = await Store.open(db)
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    # An empty (zero-byte) file is new too.
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    store = await Store.open(empty)
    await store.close()
    assert os.path.getsize(empty) > 0
