"""Seeking in a long session: a 1,000,000-event log, opened and sought at random points.

Builds a session of realistic events (1,000 threads streaming, calling tools, finishing)
through tower's bus and store, so the log carries the periodic state snapshots a live run
writes. Then prints:
  - time to open it at its start (open the database, find the session, reduce to event 1),
  - the median and p95 time to seek to a random event (nearest snapshot + the events after),
  - the baseline measured in the same run: folding from event 1 to random points,
and the ratio last. Targets: open <= 1 s, median seek <= 200 ms.

    python bench/replay_seek.py [--events 1000000] [--seeks 30]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

from tower.core.bus import SNAPSHOT_EVERY, Bus
from tower.core.events import EventKind
from tower.core.replay import resolve_session, state_at
from tower.core.state import TowerState, apply
from tower.core.store import Store

TEXT = "Reading the filing; the margin trend matters more than the level. " * 3


async def build(db: Path, n: int, threads: int) -> str:
    store = await Store.open(db)
    session = "bench-seek"
    await store.create_session(session, "bench", str(db.parent), time.time(), {})
    store.start_writer(session)
    bus = Bus(store, secrets={})
    emit = bus.emit
    emit(EventKind.SESSION_STARTED, session=session, project="bench", budget_usd=None)
    for t in range(threads):
        emit(
            EventKind.THREAD_SPAWNED,
            f"t{t}",
            agent="a",
            task=f"t{t}",
            title=f"task {t}",
            cascade=["sim/small"],
            model="sim/small",
            priority=0,
        )
        emit(EventKind.THREAD_STATE, f"t{t}", state="running", reason="")
    rng = random.Random(3)
    step = 0
    while bus.seq < n - threads:
        step += 1
        for t in rng.sample(range(threads), 50):
            tid = f"t{t}"
            emit(
                EventKind.LLM_STARTED,
                tid,
                call=f"c{bus.seq}",
                step=step,
                model="sim/small",
                reserved_usd=0.0004,
                reserved_tokens=900,
            )
            emit(EventKind.LLM_DELTA, tid, call="c", text=TEXT)
            emit(
                EventKind.LLM_FINISHED,
                tid,
                call="c",
                step=step,
                model="sim/small",
                text=TEXT,
                tool_calls=[],
                usage={"prompt_tokens": 700, "completion_tokens": 60, "total_tokens": 760},
                cost_usd=0.00014,
                reserved_usd=0.0004,
            )
            emit(
                EventKind.TOOL_CALLED,
                tid,
                call_id="x",
                tool="read_file",
                args={"path": "q.csv"},
                reason="",
            )
            emit(
                EventKind.TOOL_RESULT,
                tid,
                call_id="x",
                tool="read_file",
                ok=True,
                result="quarter,margin\nQ1,0.12\nQ2,0.14\n",
            )
            if bus.seq >= n - threads:
                break
    for t in range(threads):
        if bus.seq >= n:
            break
        emit(EventKind.THREAD_STATE, f"t{t}", state="done", reason="finished", answer="ok")
    await store.end_session(session)
    await store.close()
    return session


async def fold_to(store: Store, session: str, at: int) -> TowerState:
    state = TowerState()
    async with aclosing(store.events(session)) as events:
        async for ev in events:
            if ev.seq > at:
                break
            apply(state, ev)
    return state


async def run(n: int, seeks: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "seek.db"
        t0 = time.perf_counter()
        session = await build(db, n, 1000)
        built = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in Path(tmp).glob("seek.db*")) / 1e6

        t0 = time.perf_counter()
        store = await Store.open(db)
        sid = await resolve_session(store, session[:8])
        first = await state_at(store, sid, 1)
        opened = time.perf_counter() - t0
        assert first.last_seq == 1

        last = (await state_at(store, sid, None)).last_seq
        rng = random.Random(5)
        points = [rng.randint(1, last) for _ in range(seeks)]
        times = []
        for at in points:
            t0 = time.perf_counter()
            state = await state_at(store, sid, at)
            times.append(time.perf_counter() - t0)
            assert state.last_seq == at
        base = []
        for at in points[:3]:
            t0 = time.perf_counter()
            await fold_to(store, sid, at)
            base.append(time.perf_counter() - t0)
        await store.close()
    times.sort()
    med, p95 = statistics.median(times), times[int(0.95 * (len(times) - 1))]
    med_base = statistics.median(base)
    print(
        f"{last:,} events from 1,000 threads ({size_mb:.0f} MB on disk, built in {built:.1f} s),"
        f" a snapshot every {SNAPSHOT_EVERY:,} events"
    )
    print(f"open at the start: {opened * 1000:.0f} ms (target <= 1000)")
    print(
        f"seek to a random event: median {med * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"
        f" over {seeks} seeks (target median <= 200)"
    )
    print(f"baseline, fold from event 1: median {med_base * 1000:.0f} ms over {len(base)} seeks")
    print(f"ratio seek/baseline {med / med_base:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seeks", type=int, default=30)
    a = p.parse_args(argv)
    asyncio.run(run(a.events, a.seeks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
