"""The SQLite session log (tower/core/store.py) on a real file in tmp_path."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import WAIT_S
from tower.core.events import Event, EventKind
from tower.core.store import Store, StoreError


def _events(n_threads: int = 3, calls_per_thread: int = 2) -> list[Event]:
    """A plausible session: spawns, LLM calls with costs, unicode and nested payloads."""
    out: list[Event] = []

    def add(kind: EventKind, thread: str | None, **payload: Any) -> None:
        out.append(Event(len(out) + 1, 1_700_000_000.0 + len(out) * 0.125, kind, thread, payload))

    add(EventKind.SESSION_STARTED, None, session="s", project="demo", budget_usd=1.0)
    for t in range(n_threads):
        tid = f"t{t}"
        add(
            EventKind.THREAD_SPAWNED,
            tid,
            agent="w",
            task=tid,
            title="Ünïcødé ✓ title",
            cascade=["sim/small"],
        )
        for c in range(calls_per_thread):
            add(EventKind.LLM_STARTED, tid, call=f"c{t}{c}", step=c + 1, reserved_usd=0.01)
            add(EventKind.LLM_DELTA, tid, call=f"c{t}{c}", text="日本語 and emoji 🚀")
            add(
                EventKind.LLM_FINISHED,
                tid,
                call=f"c{t}{c}",
                usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                cost_usd=0.001 * (t + 1) + 0.0001 * c,
                tool_calls=[{"id": "x", "function": {"name": "read_file", "arguments": "{}"}}],
                reserved_usd=0.01,
            )
        add(EventKind.THREAD_STATE, tid, state="done", reason="finished", answer=None)
    add(EventKind.SESSION_ENDED, None, reason="finished")
    return out


async def _record(db: Path, session: str, events: list[Event], started: float = 100.0) -> None:
    store = await Store.open(db)
    try:
        await store.create_session(session, "demo", "/tmp/demo", started, {"seed": 3})
        store.start_writer(session)
        for ev in events:
            store.append(ev)
        await store.end_session(session, "clean")
    finally:
        await store.close()


async def _read(store: Store, session: str, after: int = 0) -> list[Event]:
    return [ev async for ev in store.events(session, after)]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid no longer names a process
    return proc.pid


async def test_open_creates_a_wal_database(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "tower.db"
    store = await Store.open(db)
    assert store.path == db
    await store.close()
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sessions", "events"} <= tables


async def test_events_round_trip_in_order(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    events = _events()
    await _record(db, "sess-1", events)

    store = await Store.open(db)
    try:
        back = await _read(store, "sess-1")
        assert len(back) == len(events)
        for a, b in zip(back, events, strict=True):
            assert (a.seq, a.ts, a.kind, a.thread, a.payload) == (
                b.seq,
                b.ts,
                b.kind,
                b.thread,
                b.payload,
            )
            assert isinstance(a.kind, EventKind)
        assert [e.seq for e in back] == sorted(e.seq for e in events)
        # Reading after a seq resumes where a replay left off.
        k = len(events) // 3
        assert [e.seq for e in await _read(store, "sess-1", k)] == [e.seq for e in events[k:]]
        assert await _read(store, "no-such-session") == []
    finally:
        await store.close()


async def test_payload_json_given_by_the_bus_is_stored_verbatim(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await Store.open(db)
    await store.create_session("s", "demo", "/d", 1.0, {})
    store.start_writer("s")
    ev = Event(1, 2.0, EventKind.COMMENT, "t1", {"text": "[redacted]", "by": "human"})
    store.append(ev, '{"text":"[redacted]","by":"human"}')
    await store.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT session, seq, ts, thread, kind, payload FROM events").fetchall()
    assert rows == [("s", 1, 2.0, "t1", "comment", '{"text":"[redacted]","by":"human"}')]


async def test_sessions_are_kept_apart(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    a = _events(n_threads=1)
    b = _events(n_threads=2)
    await _record(db, "a", a, started=1.0)
    await _record(db, "b", b, started=2.0)
    store = await Store.open(db)
    try:
        assert [e.to_dict() for e in await _read(store, "a")] == [e.to_dict() for e in a]
        assert [e.to_dict() for e in await _read(store, "b")] == [e.to_dict() for e in b]
    finally:
        await store.close()


async def test_list_sessions_reports_clean_with_threads_and_cost(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    first = _events(n_threads=3, calls_per_thread=2)
    second = _events(n_threads=5, calls_per_thread=1)
    await _record(db, "first", first, started=10.0)
    await _record(db, "second", second, started=20.0)

    store = await Store.open(db)
    try:
        rows = await store.list_sessions()
    finally:
        await store.close()
    assert [r.id for r in rows] == ["first", "second"]  # oldest first
    for row, evs in zip(rows, (first, second), strict=True):
        assert row.status == "clean"
        assert row.project == "demo"
        assert row.project_dir == "/tmp/demo"
        assert row.ended is not None
        assert row.threads == sum(1 for e in evs if e.kind is EventKind.THREAD_SPAWNED)
        expected_cost = sum(e.payload["cost_usd"] for e in evs if e.kind is EventKind.LLM_FINISHED)
        assert row.cost_usd == pytest.approx(expected_cost)
        d = row.to_dict()
        assert d["status"] == "clean"
        assert d["threads"] == row.threads
        assert d["cost_usd"] == round(expected_cost, 6)
    assert rows[0].started == 10.0
    assert rows[1].started == 20.0


async def test_session_without_events_lists_zero(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tower.db")
    try:
        await store.create_session("empty", "demo", "/d", 1.0, {})
        (row,) = await store.list_sessions()
    finally:
        await store.close()
    assert row.threads == 0
    assert row.cost_usd == 0


async def test_running_session_of_this_live_process_is_running(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tower.db")
    try:
        await store.create_session("live", "demo", "/d", 1.0, {})
        (row,) = await store.list_sessions()
    finally:
        await store.close()
    assert row.status == "running"
    assert row.ended is None


async def test_running_session_with_dead_pid_shows_as_crashed(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await Store.open(db)
    try:
        await store.create_session("gone", "demo", "/d", 1.0, {})
        await store.create_session("elsewhere", "demo", "/d", 2.0, {})
    finally:
        await store.close()
    dead = _dead_pid()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET pid = ? WHERE id = 'gone'", (dead,))
        # A live pid, but on another machine: this host cannot vouch for it.
        conn.execute(
            "UPDATE sessions SET pid = ?, host = ? WHERE id = 'elsewhere'",
            (os.getpid(), socket.gethostname() + "-other"),
        )
    store = await Store.open(db)
    try:
        rows = {r.id: r for r in await store.list_sessions()}
    finally:
        await store.close()
    assert rows["gone"].status == "crashed"
    assert rows["elsewhere"].status == "crashed"
    with sqlite3.connect(db) as conn:  # listing does not rewrite the stored status
        assert (
            conn.execute("SELECT status FROM sessions WHERE id='gone'").fetchone()[0] == "running"
        )


async def test_flush_makes_events_visible_to_another_connection(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await Store.open(db)
    try:
        await store.create_session("s", "demo", "/d", 1.0, {})
        store.start_writer("s")
        events = _events()
        for ev in events:
            store.append(ev)
        await store.flush()
        assert store.written == len(events)
        with sqlite3.connect(db) as other:
            rows = other.execute(
                "SELECT seq, kind FROM events WHERE session='s' ORDER BY seq"
            ).fetchall()
        assert rows == [(e.seq, str(e.kind)) for e in events]

        more = Event(
            len(events) + 1, 9.0, EventKind.COMMENT, "t0", {"text": "later", "by": "human"}
        )
        store.append(more)
        await store.flush()
        with sqlite3.connect(db) as other:
            count = other.execute("SELECT count(*) FROM events WHERE session='s'").fetchone()[0]
        assert count == len(events) + 1
    finally:
        await store.close()


async def test_flush_without_writer_returns(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tower.db")
    try:
        # Never started: nothing to wait for.
        await asyncio.wait_for(store.flush(), WAIT_S)
        assert (store.written, store.error) == (0, None)

        await store.create_session("s", "demo", "/d", 1.0, {})
        store.start_writer("s")
        events = _events(n_threads=1, calls_per_thread=1)
        for ev in events:
            store.append(ev)
        await store.end_session("s")
        assert store.written == len(events)
        # An event queued once the writer is gone can never be written; flush must return
        # rather than wait forever for progress that will not come.
        store.append(Event(len(events) + 1, 9.0, EventKind.COMMENT, None, {"text": "late"}))
        await asyncio.wait_for(store.flush(), WAIT_S)
        assert (store.written, store.error) == (len(events), None)
    finally:
        await store.close()


async def test_close_drains_queued_events(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await Store.open(db)
    await store.create_session("s", "demo", "/d", 1.0, {})
    store.start_writer("s")
    events = _events(n_threads=20)
    for ev in events:
        store.append(ev)
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(events)


async def test_close_twice_is_safe(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tower.db")
    await store.create_session("s", "demo", "/d", 1.0, {})
    store.start_writer("s")
    store.append(Event(1, 1.0, EventKind.COMMENT, None, {"text": "x", "by": "human"}))
    await store.close()
    await store.close()
    with sqlite3.connect(tmp_path / "tower.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


async def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    for db in (blocker / "tower.db", blocker / "deeper" / "tower.db"):
        with pytest.raises(StoreError) as info:
            await Store.open(db)
        assert str(db) in str(info.value)
    assert blocker.read_text() == "I am a file"


async def test_path_is_a_directory(tmp_path: Path) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(StoreError) as info:
        await Store.open(folder)
    assert str(folder) in str(info.value)


async def test_duplicate_session_id_is_a_store_error(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await Store.open(db)
    try:
        await store.create_session("s", "demo", "/d", 1.0, {})
        with pytest.raises(StoreError) as info:
            await store.create_session("s", "demo", "/d", 2.0, {})
        assert str(db) in str(info.value)
    finally:
        await store.close()


async def test_resolve_session_by_unique_prefix(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "tower.db")
    try:
        await store.create_session("20240101-aaaa", "demo", "/d", 1.0, {})
        await store.create_session("20240101-aabb", "demo", "/d", 2.0, {})
        await store.create_session("20240202-cccc", "demo", "/d", 3.0, {})
        # The CLI's and the replay's resolver (Store's own copy was never used).
        from tower.core.replay import ReplayError, resolve_session

        assert await resolve_session(store, "20240202") == "20240202-cccc"
        assert await resolve_session(store, "20240101-aaa") == "20240101-aaaa"
        with pytest.raises(ReplayError, match="ambiguous"):
            await resolve_session(store, "20240101")
        with pytest.raises(ReplayError, match="no session '1999'"):
            await resolve_session(store, "1999")
    finally:
        await store.close()


async def _store_with_failed_write(db: Path) -> Store:
    """A store whose writer hit an SQLite error: two events share (session, seq)."""
    store = await Store.open(db)
    await store.create_session("s", "demo", "/d", 1.0, {})
    store.start_writer("s")
    ev = Event(1, 1.0, EventKind.COMMENT, None, {"text": "x", "by": "human"})
    store.append(ev)
    store.append(ev)
    return store


async def test_a_failed_write_is_recorded_with_the_path(tmp_path: Path) -> None:
    db = tmp_path / "tower.db"
    store = await _store_with_failed_write(db)
    try:
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.flush(), 5)  # a timeout only as a safety net
        assert isinstance(store.error, StoreError)
        assert str(db) in str(store.error)
        assert store.written == 0
    finally:
        await store.close()


async def test_append_after_a_failed_write_fails_loudly(tmp_path: Path) -> None:
    store = await _store_with_failed_write(tmp_path / "tower.db")
    try:
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.flush(), 5)
        with pytest.raises(StoreError):
            store.append(Event(2, 2.0, EventKind.COMMENT, None, {"text": "y", "by": "human"}))
    finally:
        await store.close()


async def test_flush_reports_a_failed_write(tmp_path: Path) -> None:
    store = await _store_with_failed_write(tmp_path / "tower.db")
    try:
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.flush(), 5)
    finally:
        await store.close()


async def test_sessions_list_the_persons_minutes_apart_from_blocked_minutes(
    tmp_path: Path,
) -> None:
    """Attention (recorded on each human decision) and blocked time (how long the item
    waited) are summed per session; a rule's decisions and dropped items count neither."""
    store = await Store.open(tmp_path / "tower.db")
    try:
        await store.create_session("s", "demo", "/d", 0.0, {})
        store.start_writer("s")
        closes = [
            {"by": "human", "resolution": "approved", "attention_s": 6.0, "waited_s": 120.0},
            {"by": "human", "resolution": "denied", "attention_s": 3.0, "waited_s": 60.0},
            {"by": "rule:--approve all", "resolution": "approved", "waited_s": 999.0},
            {"by": "human", "resolution": "dropped", "waited_s": 999.0},
        ]
        for seq, p in enumerate(closes, 1):
            store.append(Event(seq, float(seq), EventKind.INBOX_CLOSED, "t", {"item": "i", **p}))
        await store.end_session("s")
        (row,) = await store.list_sessions()
        assert row.human_minutes == pytest.approx(9.0 / 60)
        assert row.blocked_minutes == pytest.approx(3.0)
        assert row.to_dict()["blocked_minutes"] == 3.0
    finally:
        await store.close()
