"""The session log: events and sessions in one SQLite file through aiosqlite.

One writer task drains a queue in batches (executemany + one commit per batch), so emitting
an event never waits on the disk and the log keeps up with hundreds of streaming threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import zlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import platformdirs

from tower.core.events import ENDED_STATES, Event, EventKind
from tower.core.payloads import TYPES, stored_names

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    project_dir TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL DEFAULT 'running',
    pid INTEGER,
    host TEXT,
    meta TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS events (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    thread TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_kind ON events (session, kind);
CREATE TABLE IF NOT EXISTS snapshots (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state BLOB NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
"""
_SNAPSHOT = "INSERT OR REPLACE INTO snapshots (session, seq, state) VALUES (?, ?, ?)"
# The response cache's lookup and its partial index (the WHERE must match for SQLite to use
# it): only answered calls that carry a key are in it. json_valid first: a damaged row (not
# JSON) is left out, instead of failing the index, every later write, or the lookup.
_ANSWERED = (
    "kind = 'llm_finished' AND json_valid(payload) AND json_extract(payload, '$.key') IS NOT NULL"
)
_RESPONSE_INDEX = (
    "CREATE INDEX IF NOT EXISTS events_response_key ON events (json_extract(payload, '$.key'))"
    f" WHERE {_ANSWERED}"
)
_ANSWER_FOR = (
    f"SELECT session, seq, payload FROM events WHERE {_ANSWERED}"
    " AND json_extract(payload, '$.key') = ? ORDER BY session, seq LIMIT 1"
)

log = logging.getLogger("tower.store")

_INSERT = "INSERT INTO events (session, seq, ts, thread, kind, payload) VALUES (?, ?, ?, ?, ?, ?)"
_BATCH = 5000


class StoreError(Exception):
    """The database cannot be opened or written; the message names the path."""


class DamagedLog(StoreError):
    """A recorded session that cannot be read back as it was written: a payload that is not
    JSON, an unknown kind, a missing field, a gap in the numbering. The message names the
    session and the event."""


# tower's own mark in the SQLite header ("TOWR"), and the layout of its tables. Schema 1 is
# the unmarked layout of earlier releases (application_id and user_version both 0): it is
# recognised by its tables and upgraded in place.
APPLICATION_ID = int.from_bytes(b"TOWR", "big")
SCHEMA_VERSION = 2
_COLUMNS = {
    "sessions": {"id", "project", "project_dir", "started", "ended", "status", "pid", "host"},
    "events": {"session", "seq", "ts", "thread", "kind", "payload"},
    "snapshots": {"session", "seq", "state"},
}
_NEEDED = ("sessions", "events")  # snapshots are a cache: re-created when missing

# Payload fields that reading a session back relies on (the reducer, resume, the printer).
# What an event cannot be read without, per kind: the typed payloads' fields with no default.
# Per kind, its required fields, each with the names older versions stored it under.
REQUIRED_FIELDS: dict[EventKind, tuple[tuple[str, ...], ...]] = {
    k: fields for k in TYPES if (fields := stored_names(k))
}


def damaged(session: str, seq: int, kind: object, why: str, path: object) -> DamagedLog:
    """The one-line error for a damaged event: session, seq, kind, what is wrong, where."""
    return DamagedLog(f"session {session}: event {seq} ({kind}): {why} (database {path})")


async def _tables(conn: aiosqlite.Connection) -> dict[str, set[str]]:
    """Every table of the database (SQLite's own excepted) with its columns; reads only."""
    out: dict[str, set[str]] = {}
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ) as cur:
        names = [r[0] async for r in cur]
    for name in names:
        async with conn.execute("SELECT name FROM pragma_table_info(?)", (name,)) as cur:
            out[name] = {r[0] async for r in cur}
    return out


async def _pragma(conn: aiosqlite.Connection, name: str) -> int:
    async with conn.execute(f"PRAGMA {name}") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _check_schema(conn: aiosqlite.Connection, db: Path) -> bool:
    """Whether the file is tower's (True: open it, creating or upgrading its tables).

    Raises StoreError, without writing anything, for a file that is not tower's: another
    program's tables, another application_id, a newer schema, or tower's tables damaged.
    """
    app = await _pragma(conn, "application_id")
    version = await _pragma(conn, "user_version")
    tables = await _tables(conn)
    names = ", ".join(sorted(tables)) or "none"
    refuse = "; tower will not write into it"
    if app not in (0, APPLICATION_ID):
        raise StoreError(f"{db} is not a tower database: its application_id is {app:#010x}{refuse}")
    if app == 0:
        if not tables and version == 0:
            return True  # a new, empty file
        foreign = sorted(set(tables) - set(_COLUMNS))
        if foreign or version != 0 or any(t not in tables for t in _NEEDED):
            raise StoreError(f"{db} is not a tower database: it has tables {names}{refuse}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{db} was written by a newer tower (schema {version}, this one reads up to"
            f" {SCHEMA_VERSION}); upgrade tower to open it"
        )
    missing = [t for t in _NEEDED if t not in tables]
    if missing:
        held = ""
        if "sessions" in tables:
            async with conn.execute("SELECT id FROM sessions ORDER BY started LIMIT 4") as cur:
                ids = [r[0] async for r in cur]
            if ids:
                more = ", …" if len(ids) > 3 else ""
                held = f" (it records session {', '.join(map(str, ids[:3]))}{more})"
        raise StoreError(
            f"{db} is damaged: its {' and '.join(missing)} table is missing{held};"
            " tower will not re-create it"
        )
    for table, columns in _COLUMNS.items():
        lacking = sorted(columns - tables.get(table, columns))
        if lacking:
            kind = "is not a tower database" if app == 0 else "is damaged"
            raise StoreError(
                f"{db} {kind}: table {table} has no column {', '.join(lacking)}{refuse}"
            )
    return True


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("tower", appauthor=False)) / "tower.db"


@dataclass(slots=True)
class SessionRow:
    id: str
    project: str
    project_dir: str
    started: float
    ended: float | None
    status: str  # running | clean | unfinished | crashed
    threads: int
    cost_usd: float
    done: int = 0
    failed: int = 0
    killed: int = 0
    unfinished: int = 0  # spawned threads not done, failed or killed at the end of the log
    human_minutes: float = 0.0  # the person's time deciding (attention)
    blocked_minutes: float = 0.0  # thread-minutes spent waiting for the person
    lost_usd: float = 0.0  # possibly billed: calls a crash cut off, at their reservation

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "started": self.started,
            "ended": self.ended,
            "status": self.status,
            "threads": self.threads,
            "cost_usd": round(self.cost_usd, 6),
            "human_minutes": round(self.human_minutes, 3),
            "blocked_minutes": round(self.blocked_minutes, 3),
            "lost_usd": round(self.lost_usd, 6),
        }


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Store:
    """Owns one aiosqlite connection; use `await Store.open(path)` and always `await close()`."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        # Rows wait in a plain list that the writer swaps out whole: cheaper per event than a
        # queue, and one wake-up serves a whole batch.
        self._pending: list[tuple[Any, ...]] = []
        self._snapshots: list[tuple[str, int, bytes]] = []
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._appended = 0
        self._stopping = False
        self._writer: asyncio.Task[None] | None = None
        self.written = 0
        self.error: BaseException | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path | None = None) -> Store:
        db = Path(path) if path is not None else default_db_path()
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder for database {db}: {exc.strerror}"
            ) from None
        if db.is_dir():
            raise StoreError(f"database path {db} is a folder, expected a file")
        conn: aiosqlite.Connection | None = None
        try:
            conn = await aiosqlite.connect(db)
            await conn.execute("PRAGMA busy_timeout=5000")
            # Whose file is it? Decided on reads alone: a file that is not tower's is left
            # exactly as it was (no tables added, not switched to WAL).
            await _check_schema(conn, db)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            marked = (
                await _pragma(conn, "application_id") == APPLICATION_ID
                and await _pragma(conn, "user_version") == SCHEMA_VERSION
            )
            if marked:  # IF NOT EXISTS: writes nothing when every table is there
                await conn.executescript(SCHEMA)
            else:  # new or upgraded: tables and marks in one transaction, seen whole or not
                await conn.executescript(
                    f"BEGIN IMMEDIATE; {SCHEMA} PRAGMA application_id={APPLICATION_ID};"
                    f" PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                )
            await conn.commit()
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                await conn.close()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
                raise StoreError(
                    f"{db} is not a tower database: it is not an SQLite file"
                ) from None
            raise StoreError(f"cannot open database {db}: {exc}") from None
        return cls(db, conn)

    # --- writing -----------------------------------------------------------------------

    async def create_session(
        self, session: str, project: str, project_dir: str, started: float, meta: dict[str, Any]
    ) -> None:
        try:
            await self._conn.execute(
                "INSERT INTO sessions (id, project, project_dir, started, status, pid, host, meta)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (
                    session,
                    project,
                    project_dir,
                    started,
                    os.getpid(),
                    socket.gethostname(),
                    json.dumps(meta),
                ),
            )
            await self._conn.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to database {self.path}: {exc}") from None

    async def reopen_session(self, session: str) -> None:
        """Marks a recorded session as running again, in this process (resume)."""
        await self._conn.execute(
            "UPDATE sessions SET ended = NULL, status = 'running', pid = ?, host = ? WHERE id = ?",
            (os.getpid(), socket.gethostname(), session),
        )
        await self._conn.commit()

    @property
    def writing(self) -> bool:
        """Whether the writer task runs (a session's log is open for appending)."""
        return self._writer is not None and not self._writer.done()

    def start_writer(self, session: str) -> None:
        self._session = session
        self._writer = asyncio.create_task(self._write_loop(), name="tower-store-writer")

    def append(self, ev: Event, payload_json: str | None = None) -> None:
        """Queues an event for the writer; never blocks. Raises once the log is broken."""
        if self.error is not None:
            raise self.error
        text = ev.payload_json() if payload_json is None else payload_json
        self._pending.append((self._session, ev.seq, ev.ts, ev.thread, ev.kind.value, text))
        self._appended += 1
        self._wake.set()

    def append_snapshot(self, seq: int, state_json: str) -> None:
        """Queues a state snapshot (compressed); it is written after the events up to `seq`."""
        self._snapshots.append((self._session, seq, zlib.compress(state_json.encode(), 1)))
        self._wake.set()

    async def _write_loop(self) -> None:
        try:
            await self._drain_forever()
        finally:
            self._progress.set()  # a flush waiting on a writer that stopped must wake up

    async def _drain_forever(self) -> None:
        conn = self._conn
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, self._pending = self._pending, []
            snapshots, self._snapshots = self._snapshots, []
            for start in range(0, len(rows), _BATCH):
                batch = rows[start : start + _BATCH]
                if self.error is not None:
                    break
                try:
                    await conn.executemany(_INSERT, batch)
                    await conn.commit()
                    self.written += len(batch)
                except (sqlite3.Error, ValueError) as exc:  # UnicodeEncodeError is a ValueError
                    # Every later flush/append fails loudly: a broken log must not look fine.
                    self.error = StoreError(f"cannot write to database {self.path}: {exc}")
                    log.error("%s", self.error)
                    with contextlib.suppress(sqlite3.Error):
                        await conn.rollback()
            if snapshots and self.error is None:
                try:
                    await conn.executemany(_SNAPSHOT, snapshots)
                    await conn.commit()
                except sqlite3.Error as exc:
                    log.warning("snapshot not written to %s: %s", self.path, exc)
            self._progress.set()
            if self._stopping and not self._pending:
                return

    async def flush(self) -> None:
        """Waits until every event appended so far is committed; raises if any write failed."""
        target = self._appended
        while self.written < target and self.error is None:
            if self._writer is None or self._writer.done():
                break
            self._progress.clear()
            await self._progress.wait()
        if self.error is not None:
            raise self.error

    async def end_session(self, session: str, status: str = "clean") -> None:
        await self._stop_writer()
        if self.error is not None:
            raise self.error
        await self._conn.execute(
            "UPDATE sessions SET ended = ?, status = ? WHERE id = ?", (time.time(), status, session)
        )
        await self._conn.commit()

    async def _stop_writer(self) -> None:
        if self._writer is not None and not self._writer.done():
            self._stopping = True
            self._wake.set()
            await asyncio.shield(self._writer)
        self._writer = None

    async def close(self) -> None:
        """Drains the writer and closes the connection; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stop_writer()
        finally:
            await self._conn.close()

    # --- reading -----------------------------------------------------------------------

    async def list_sessions(self) -> list[SessionRow]:
        """Every session, oldest first, with its threads' outcomes.

        The status is derived, never rewritten in the table: `running` whose process is gone
        is `crashed`; an ended session (quit, interrupted) that left threads unfinished is
        `unfinished` rather than `clean` — it can be resumed, and a resume that finishes every
        thread makes it `clean` again.
        """
        try:
            return await self._list_sessions()
        except sqlite3.Error as exc:
            await self.check_log()  # names the damaged event, if that is the cause
            raise StoreError(f"cannot read database {self.path}: {exc}") from None

    async def _list_sessions(self) -> list[SessionRow]:
        sql = """
        SELECT s.id, s.project, s.project_dir, s.started, s.ended, s.status, s.pid, s.host,
          (SELECT count(*) FROM events e WHERE e.session = s.id AND e.kind = ?),
          (SELECT coalesce(sum(json_extract(e.payload, '$.cost_usd')), 0) FROM events e
             WHERE e.session = s.id AND e.kind IN (?, ?))
        FROM sessions s ORDER BY s.started
        """  # a compaction's summary is a paid call too
        host = socket.gethostname()
        ends = await self._thread_ends()
        people = await self._human_time()
        lost = await self._lost_usd()
        rows = []
        async with self._conn.execute(
            sql,
            (str(EventKind.THREAD_SPAWNED), str(EventKind.LLM_FINISHED), str(EventKind.COMPACTED)),
        ) as cur:
            async for r in cur:
                status = r[5]
                if status == "running" and not (r[7] == host and _pid_alive(r[6])):
                    status = "crashed"
                end = ends.get(r[0], {})
                done, failed, killed = (end.get(s, 0) for s in ("done", "failed", "killed"))
                failed += end.get("skipped", 0)  # a task graph's skip: ended, not done
                unfinished = max(r[8] - done - failed - killed, 0)
                if status == "clean" and unfinished:
                    status = "unfinished"
                row = SessionRow(r[0], r[1], r[2], r[3], r[4], status, r[8], r[9])
                row.done, row.failed, row.killed, row.unfinished = done, failed, killed, unfinished
                spent, waited = people.get(r[0], (0.0, 0.0))
                row.human_minutes, row.blocked_minutes = spent / 60, waited / 60
                row.lost_usd = lost.get(r[0], 0.0)
                rows.append(row)
        return rows

    async def _thread_ends(self) -> dict[str, dict[str, int]]:
        """session -> {last recorded state of each thread: how many threads}."""
        # One index search per session (CROSS JOIN keeps sessions outermost); the bare
        # json_extract comes from the row holding max(seq): each thread's latest state.
        sql = """
        SELECT session, state, count(*) FROM (
          SELECT e.session AS session, json_extract(e.payload, '$.state') AS state, max(e.seq)
          FROM sessions s CROSS JOIN events e ON e.session = s.id AND e.kind = ?
          GROUP BY e.session, e.thread
        ) GROUP BY session, state
        """
        out: dict[str, dict[str, int]] = {}
        async with self._conn.execute(sql, (str(EventKind.THREAD_STATE),)) as cur:
            async for session, state, n in cur:
                out.setdefault(session, {})[state] = n
        return out

    async def _lost_usd(self) -> dict[str, float]:
        """session -> dollars booked for calls lost in a crash (possibly billed). Reads both
        versions of LLM_LOST (the amount was `usd` before version 2): SQL sees raw payloads,
        not the upcast ones."""
        sql = """
        SELECT session, coalesce(sum(coalesce(
          json_extract(payload, '$.reserved_usd'), json_extract(payload, '$.usd'))), 0)
        FROM events
        WHERE kind = ? GROUP BY session
        """
        async with self._conn.execute(sql, (str(EventKind.LLM_LOST),)) as cur:
            return {session: float(usd) async for session, usd in cur}

    async def _human_time(self) -> dict[str, tuple[float, float]]:
        """session -> (seconds the person spent deciding, seconds threads waited for them)."""
        sql = """
        SELECT e.session,
          coalesce(sum(json_extract(e.payload, '$.attention_s')), 0),
          coalesce(sum(json_extract(e.payload, '$.waited_s')), 0)
        FROM events e
        WHERE e.kind = ? AND json_extract(e.payload, '$.by') = 'human'
          AND json_extract(e.payload, '$.resolution') != 'dropped'
        GROUP BY e.session
        """
        out: dict[str, tuple[float, float]] = {}
        async with self._conn.execute(sql, (str(EventKind.INBOX_CLOSED),)) as cur:
            async for session, spent, waited in cur:
                out[session] = (float(spent), float(waited))
        return out

    async def last_thread_end(self, session: str) -> int:
        """The seq of the session's last thread-ending event (0 if none): forking just before
        it leaves at least one thread to continue."""
        ended = [str(s) for s in ENDED_STATES]
        marks = ", ".join("?" for _ in ended)  # as many as there are ended states
        sql = f"""
        SELECT coalesce(max(seq), 0) FROM events
        WHERE session = ? AND kind = ? AND json_extract(payload, '$.state') IN ({marks})
        """
        async with self._conn.execute(
            sql, (session, str(EventKind.THREAD_STATE), *sorted(ended))
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _select(
        self,
        where: str,
        params: tuple[Any, ...],
        limit: int = -1,
        after: int | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Events in order; a row that cannot be read raises DamagedLog naming it. With
        `after`, the numbering must run on from there without a gap."""
        session = params[0]
        expected = None if after is None else after + 1
        async with self._conn.execute(
            f"SELECT seq, ts, kind, thread, payload FROM events WHERE {where} ORDER BY seq LIMIT ?",
            (*params, limit),
        ) as cur:
            async for seq, ts, kind, thread, payload in cur:
                if expected is not None:
                    if seq != expected:
                        raise damaged(
                            session,
                            expected,
                            "missing",
                            f"not in the log, which jumps from {expected - 1} to {seq}",
                            self.path,
                        )
                    expected += 1
                try:
                    ev = Event.from_row(seq, ts, kind, thread, payload)
                except ValueError as exc:
                    raise damaged(session, seq, kind, str(exc), self.path) from None
                yield ev

    async def check_log(self, session: str | None = None) -> None:
        """Raises DamagedLog for the first damaged event of `session` (or of any session):
        a payload that is not a JSON object, an unknown kind, a missing required field, a
        gap in the numbering. One pass in SQL, nothing decoded in Python."""
        where, params = ("WHERE session = ?", (session,)) if session is not None else ("", ())
        kinds = [str(k) for k in EventKind]
        missing = " ".join(
            f"WHEN '{kind}' THEN "
            + " OR ".join(
                "(" + " AND ".join(f"json_type(payload, '$.{n}') IS NULL" for n in names) + ")"
                for names in fields
            )
            for kind, fields in REQUIRED_FIELDS.items()
        )
        sql = f"""
        SELECT session, seq, kind, payload, why FROM (
          SELECT session, seq, kind, payload, CASE
            WHEN NOT json_valid(payload) THEN 'json'
            WHEN json_type(payload) != 'object' THEN 'object'
            WHEN kind NOT IN ({", ".join("?" for _ in kinds)}) THEN 'kind'
            WHEN CASE kind {missing} ELSE 0 END THEN 'field'
          END AS why
          FROM events {where}
        ) WHERE why IS NOT NULL ORDER BY session, seq LIMIT 1
        """
        gaps = f"""
        SELECT session, prev, seq FROM (
          SELECT session, seq, lag(seq, 1, 0) OVER (PARTITION BY session ORDER BY seq) AS prev
          FROM events {where}
        ) WHERE seq != prev + 1 ORDER BY session, seq LIMIT 1
        """
        try:
            async with self._conn.execute(sql, (*kinds, *params)) as cur:
                bad = await cur.fetchone()
            async with self._conn.execute(gaps, params) as cur:
                gap = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read database {self.path}: {exc}") from None
        found: list[tuple[str, int, DamagedLog]] = []
        if gap is not None:
            ses, prev, seq = gap
            why = f"not in the log, which jumps from {prev} to {seq}"
            found.append((ses, prev + 1, damaged(ses, prev + 1, "missing", why, self.path)))
        if bad is not None:
            ses, seq, kind, payload, why = bad
            if why == "field":
                fields = REQUIRED_FIELDS.get(EventKind(kind), ())
                data = json.loads(payload)
                absent = [names[0] for names in fields if not any(n in data for n in names)]
                why = f"payload has no field {', '.join(map(repr, absent))}"
            else:
                try:
                    Event.from_row(seq, 0.0, kind, None, payload)
                    why = f"unreadable payload ({why})"
                except ValueError as exc:
                    why = str(exc)
            found.append((ses, seq, damaged(ses, seq, kind, why, self.path)))
        if found:
            raise min(found, key=lambda f: (f[0], f[1]))[2]

    async def ensure_response_index(self) -> None:
        """The response cache's index (made when a project first turns the cache on): the
        key of every answered call, so a lookup is one index probe in any size of log."""
        try:
            await self._conn.execute(_RESPONSE_INDEX)
            await self._conn.commit()
        except sqlite3.Error as exc:
            log.warning("response cache index not made in %s: %s", self.path, exc)

    async def answer_for(self, key: str) -> tuple[str, int, dict[str, Any]] | None:
        """The first recorded answer (session, seq, llm_finished payload) of a call with
        this response-cache key, in any session of this database; None when none is (or
        its row cannot be read: a cache miss, never an error)."""
        try:
            async with self._conn.execute(_ANSWER_FOR, (key,)) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            log.warning("response cache lookup failed in %s: %s", self.path, exc)
            return None
        if row is None:
            return None
        try:
            payload = json.loads(row[2])
        except ValueError:
            return None
        return (str(row[0]), int(row[1]), payload) if isinstance(payload, dict) else None

    async def snapshot_before(self, session: str, seq: int) -> tuple[int, str] | None:
        """The latest snapshot at or before event `seq`, as (seq, state JSON)."""
        async with self._conn.execute(
            "SELECT seq, state FROM snapshots WHERE session = ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (session, seq),
        ) as cur:
            row = await cur.fetchone()
        return (row[0], zlib.decompress(row[1]).decode()) if row else None

    def thread_events(self, session: str, thread: str) -> AsyncGenerator[Event, None]:
        """One thread's events in order (the detail view's transcript)."""
        return self._select("session = ? AND thread = ?", (session, thread))

    def events(
        self, session: str, after_seq: int = 0, limit: int = -1
    ) -> AsyncGenerator[Event, None]:
        """A session's events in order, after a sequence number (replay, export)."""
        return self._select("session = ? AND seq > ?", (session, after_seq), limit, after_seq)

    async def seq_at_time(self, session: str, ts: float) -> int:
        """The last event at or before time `ts` (0 before the first)."""
        async with self._conn.execute(
            "SELECT coalesce(max(seq), 0) FROM events WHERE session = ? AND ts <= ?",
            (session, ts),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def bounds(self, session: str) -> tuple[int, float, float]:
        """(last seq, first ts, last ts) of a session."""
        async with self._conn.execute(
            "SELECT coalesce(max(seq), 0), coalesce(min(ts), 0), coalesce(max(ts), 0)"
            " FROM events WHERE session = ?",
            (session,),
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0]), float(row[1]), float(row[2])
