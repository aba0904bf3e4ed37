"""Events per second through tower's store, against raw sqlite3 in the same run.

tower: Store.open on a temp file, create_session, start_writer, then N realistic events
(llm_started / llm_delta / llm_finished / tool_called / tool_result / thread_state from a few
hundred interleaved threads) built as Events and handed to Store.append, so JSON
serialisation, the queue and the batched writer are included. The clock runs from the first
append until end_session has committed everything. The loop yields to the event loop every
few events, as agent tasks do. A second figure times the bus alone (serialise + reduce, no
store) for reference: in a live run the bus does that work once per event on top.

baseline: the very rows tower wrote (read back afterwards), inserted with plain sqlite3
executemany into a separate temp file with the same schema and pragmas, one transaction per
batch of tower's batch size.

    python bench/store_throughput.py [--events N] [--threads T] [--yield-every K]

The last line is the ratio tower / raw sqlite3 (target >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tower.core import payloads as pl
from tower.core import store as store_mod
from tower.core.bus import Bus
from tower.core.events import Event, EventKind
from tower.core.store import SCHEMA, Store

TARGET = 0.5

_TEXT = (
    "the total wages box withheld federal return figure check read file next notes deduction "
    "standard interest amount refund credit child household document receipt listing folder "
    "confirm before writing summary income taxable schedule rate"
)
_WORDS = tuple(_TEXT.split(" "))


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def _file_body(rng: random.Random, lines: int) -> str:
    return "\n".join(
        f"{_text(rng, 24)}: ${rng.randint(10, 99_999)}.{rng.randint(0, 99):02d}"
        for _ in range(lines)
    )


def build_events(
    n: int, threads: int, seed: int = 7
) -> list[tuple[EventKind, str, dict[str, Any]]]:
    """N events from `threads` interleaved threads, each cycling through agent steps.

    One step = llm_started, 4 llm_delta, llm_finished, tool_called, thread_state (waiting),
    thread_state (running), tool_result. The pool of texts is built once and reused, so
    building costs little memory; the payloads are distinct dicts.
    """
    rng = random.Random(seed)
    deltas = [_text(rng, rng.randint(60, 240)) for _ in range(64)]
    says = [_text(rng, rng.randint(150, 500)) for _ in range(64)]
    bodies = [_file_body(rng, rng.randint(10, 40)) for _ in range(32)]
    files = [f"doc_{i}_{_text(rng, 10).replace(' ', '_')}.txt" for i in range(16)]
    events: list[tuple[EventKind, str, dict[str, Any]]] = []
    tids = [f"task-{i + 1}" for i in range(threads)]
    for tid in tids:
        events.append(
            (
                EventKind.THREAD_SPAWNED,
                tid,
                {
                    "agent": "preparer",
                    "task": tid,
                    "title": f"Household {tid}",
                    "prompt": says[0],
                    "cascade": ["sim/small", "sim/large"],
                    "model": "sim/small",
                    "priority": 0,
                    "budget_usd": 0.05,
                    "budget_tokens": None,
                    "max_steps": 16,
                },
            )
        )
        events.append((EventKind.THREAD_STATE, tid, {"state": "running", "reason": ""}))
    steps = dict.fromkeys(tids, 0)
    cursor = dict.fromkeys(tids, 0)  # position in the step cycle
    call = 0
    calls: dict[str, str] = {}
    i = 0
    while len(events) < n:
        tid = tids[i % threads]
        i += 1
        pos = cursor[tid]
        cursor[tid] = (pos + 1) % 10
        step = steps[tid] + 1
        if pos == 0:
            call += 1
            calls[tid] = f"c{call}"
            events.append(
                (
                    EventKind.LLM_STARTED,
                    tid,
                    {
                        "call": calls[tid],
                        "step": step,
                        "model": "sim/small",
                        "attempt": 0,
                        "prompt_tokens_est": 900 + 180 * step,
                        "max_tokens": 1200,
                        "reserved_usd": 0.000855 + 0.000027 * step,
                        "reserved_tokens": 2100 + 180 * step,
                    },
                )
            )
        elif pos <= 4:
            events.append(
                (EventKind.LLM_DELTA, tid, {"call": calls[tid], "text": rng.choice(deltas)})
            )
        elif pos == 5:
            steps[tid] = step
            path = rng.choice(files)
            events.append(
                (
                    EventKind.LLM_FINISHED,
                    tid,
                    {
                        "call": calls[tid],
                        "step": step,
                        "model": "sim/small",
                        "text": rng.choice(says),
                        "tool_calls": [
                            {
                                "id": f"call_{tid}_{step}_0",
                                "type": "function",
                                "function": {
                                    "name": "read_file",
                                    "arguments": f'{{"path": "{path}"}}',
                                },
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 900 + 180 * step,
                            "completion_tokens": 95,
                            "total_tokens": 995 + 180 * step,
                        },
                        "cost_usd": 0.000192 + 0.000027 * step,
                        "price_known": True,
                        "reserved_usd": 0.000855 + 0.000027 * step,
                        "seconds": round(rng.uniform(0.2, 2.0), 4),
                        "finish_reason": "tool_calls",
                    },
                )
            )
        elif pos == 6:
            events.append(
                (
                    EventKind.TOOL_CALLED,
                    tid,
                    {
                        "call_id": f"call_{tid}_{step}_0",
                        "tool": "read_file",
                        "args": {"path": rng.choice(files)},
                        "reason": rng.choice(says),
                    },
                )
            )
        elif pos == 7:
            events.append(
                (
                    EventKind.THREAD_STATE,
                    tid,
                    {"state": "waiting", "reason": "waiting for approval of read_file"},
                )
            )
        elif pos == 8:
            events.append((EventKind.THREAD_STATE, tid, {"state": "running", "reason": ""}))
        else:
            events.append(
                (
                    EventKind.TOOL_RESULT,
                    tid,
                    {
                        "call_id": f"call_{tid}_{step}_0",
                        "tool": "read_file",
                        "ok": True,
                        "result": rng.choice(bodies),
                    },
                )
            )
    return events[:n]


async def run_tower(
    db: Path, events: list[tuple[EventKind, str, dict[str, Any]]], yield_every: int
) -> tuple[float, dict[str, float]]:
    store = await Store.open(db)
    batches: list[int] = []
    try:
        conn = store._conn
        orig = conn.executemany

        async def counting_executemany(sql: str, rows: Any) -> Any:
            batches.append(len(rows))
            return await orig(sql, rows)

        conn.executemany = counting_executemany  # type: ignore[method-assign]
        session = "bench-store"
        await store.create_session(session, "bench", str(db.parent), time.time(), {})
        store.start_writer(session)
        append = store.append
        sleep = asyncio.sleep
        t0 = time.perf_counter()
        for k, (kind, thread, payload) in enumerate(events, 1):
            append(Event(k, time.time(), kind, thread, payload))  # serialises the payload
            if k % yield_every == 0:
                await sleep(0)
        t_emitted = time.perf_counter()
        await store.end_session(session)
        t1 = time.perf_counter()
        if store.written != len(events):
            raise SystemExit(f"tower wrote {store.written} of {len(events)} events")
    finally:
        await store.close()
    info = {
        "emit_s": t_emitted - t0,
        "batches": len(batches),
        "avg_batch": sum(batches) / max(len(batches), 1),
    }
    return t1 - t0, info


def bus_only(events: list[tuple[EventKind, str, dict[str, Any]]]) -> float:
    """Serialisation + reduction alone (no store), for the breakdown."""
    bus = Bus(None, secrets={})
    emit = bus.emit
    types = pl.TYPES
    t0 = time.perf_counter()
    for kind, thread, payload in events:
        emit(types[kind].of(**payload), thread)  # the typed payload an emitter builds
    return time.perf_counter() - t0


def read_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT session, seq, ts, thread, kind, payload FROM events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def run_raw(db: Path, rows: list[tuple[Any, ...]], batch: int) -> float:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            conn.execute("BEGIN")
            conn.executemany(store_mod._INSERT, rows[i : i + batch])
            conn.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000, help="events to write (200000)")
    ap.add_argument("--threads", type=int, default=500, help="interleaved threads (500)")
    ap.add_argument(
        "--yield-every", type=int, default=50, help="emits between event-loop yields (50)"
    )
    args = ap.parse_args(argv)
    n = max(args.events, 2 * args.threads + 1)

    events = build_events(n, args.threads)
    # The prebuilt payloads are the benchmark's input, not tower's heap: keep the garbage
    # collector from walking them during the timed runs.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="tower-bench-") as tmp:
        tower_db = Path(tmp) / "tower.db"
        raw_db = Path(tmp) / "raw.db"
        t_tower, info = asyncio.run(run_tower(tower_db, events, args.yield_every))
        rows = read_rows(tower_db)
        t_bus = bus_only(events)
        t_raw = run_raw(raw_db, rows, store_mod._BATCH)

    payload_bytes = sum(len(r[5]) for r in rows) / n
    print(
        f"{n} events from {args.threads} threads, {payload_bytes:.0f} B of payload JSON on "
        f"average; tower batch size {store_mod._BATCH}, emit loop yields every "
        f"{args.yield_every} events"
    )

    tower_rate = n / t_tower
    raw_rate = n / t_raw
    print(
        f"tower  : {tower_rate:>10,.0f} events/s  ({t_tower:.2f} s; emit loop "
        f"{info['emit_s']:.2f} s, {info['batches']:.0f} batches of "
        f"{info['avg_batch']:.0f} on average)"
    )
    print(f"bus    : {n / t_bus:>10,.0f} events/s  ({t_bus:.2f} s; serialise + reduce, no store)")
    print(f"sqlite3: {raw_rate:>10,.0f} events/s  ({t_raw:.2f} s; executemany, same rows)")
    ratio = tower_rate / raw_rate
    print(f"ratio {ratio:.2f} (target >= {TARGET})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
