"""The fleet as a service, seen by its views: how fast a view absorbs the event stream, and
how long attaching to a session takes as its log grows.

Runs a real service (tower.core.service.serve) in this process on a generated sim project
whose threads all finish at once (`sim/instant`), with one view (ServiceClient) attached
from the start, and prints:
  - events/s the service emitted and events/s the view received and folded, and their
    ratio (1.0: the view keeps up);
  - a burst: the run's events as wire lines, decoded and folded by a view at full speed;
  - after the run, the time from connect to a folded snapshot (the first thing a view can
    draw) for the session's N events, beside a bare fold of the same N events from the log
    (what an in-process replay costs), measured in the same run.

    python bench/service_views.py [--threads 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from tower.core import wire
from tower.core.client import ServiceClient
from tower.core.project import load_project
from tower.core.service import serve, socket_path
from tower.core.state import TowerState, fold
from tower.core.store import Store

TOML = """
[project]
name = "views"
seed = 1

[limits]
max_concurrent = 500
adaptive = false

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["list_dir", "read_file", "finish"]

[[tasks]]
id = "t"
agent = "a"
repeat = {threads}
prompt = "Look at the folder and report."
workspace = "ws"
"""


async def main(threads: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-"))
    (tmp / "run").mkdir()
    os.environ["XDG_RUNTIME_DIR"] = str(tmp / "run")
    root = tmp / "proj"
    (root / "ws").mkdir(parents=True)
    (root / "ws" / "notes.txt").write_text("one\ntwo\n")
    (root / "tower.toml").write_text(TOML.format(threads=threads))
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    db = tmp / "t.db"
    t0 = time.perf_counter()
    task = asyncio.create_task(serve(db, load_project(root), ready=ready.set_result, stop=stop))
    session = await ready
    view = await ServiceClient.connect(socket_path(session), "bench")
    joined = view.state.last_seq  # what the snapshot held; every later event must arrive
    received = 0
    while not (len(view.state.threads) == threads and view.state.all_ended):
        msg = await view.next_message()
        if msg["type"] == "event":
            received += 1
    wall = time.perf_counter() - t0
    emitted = view.state.last_seq
    await view.close()

    # Attaching now: connect, receive and fold the snapshot.
    a0 = time.perf_counter()
    late = await ServiceClient.connect(socket_path(session), "late")
    attach_s = time.perf_counter() - a0
    await late.close()
    stop.set()
    await task

    store = await Store.open(db)
    events = [ev async for ev in store.events(session)]
    await store.close()
    f0 = time.perf_counter()
    fold(events)
    fold_s = time.perf_counter() - f0
    # A burst: the same events as wire lines, decoded and folded by a view as fast as it
    # can (the socket's own cost left out: the kernel moves these bytes far faster).
    lines = [wire.encode(wire.event(ev)) for ev in events]
    burst = ServiceClient.__new__(ServiceClient)
    burst.state, burst.resyncs = TowerState(), 0
    b0 = time.perf_counter()
    for line in lines:
        burst.fold(wire.decode(line))
    burst_s = time.perf_counter() - b0

    print(f"threads {threads}, events {emitted:,}, run {wall:.1f} s")
    after = emitted - joined
    print(
        f"service emitted {emitted / wall:,.0f} events/s; the view received all {received:,} "
        f"emitted after it joined ({after:,}) and folded them as they came: "
        f"{received / wall:,.0f} events/s (ratio received/emitted {received / max(after, 1):.3f})"
    )
    print(
        f"a burst of {len(lines):,} wire events decoded and folded by a view: "
        f"{len(lines) / burst_s:,.0f} events/s"
    )
    print(
        f"attach to {len(events):,} events: {attach_s * 1000:.0f} ms to a folded snapshot; "
        f"a bare fold of the same log: {fold_s * 1000:.0f} ms "
        f"(ratio {attach_s / max(fold_s, 1e-9):.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2000)
    asyncio.run(main(parser.parse_args().threads))
