"""The TUI under load: 1,000 concurrent sim threads streaming while keys are pressed.

By default the fleet runs as a service in its own process (`tower up`, as `tower run`
does) and the TUI is a view of it (attached over its socket, folding the events it is
sent); `--in-process` runs the core on a thread inside the TUI's process instead (as tower
did before the service). On a generated project whose threads stream text continuously on
`sim/small`, presses cursor keys and prints:
  - keypress-to-rendered-change latency p50/p95 (key sent to the driver → the first frame in
    which the thread list shows the moved cursor),
  - frames per second (compositor updates handed to the display),
  - the CPU share of the TUI's process and of the fleet's (CPU time / wall time, in cores),
  - the events/s the view absorbed while the keys were pressed,
each for an idle baseline (the same app, same keys, every thread paused) measured in the
same run and under load, then the ratios. Targets under load: p95 <= 60 ms and <= 1.3x the
idle p95.

    python bench/ui_load.py [--threads 1000] [--keys 60] [--rate 30] [--size 200x60]
                            [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from textual import events

from tower.core.project import load_project
from tower.ui.app import TowerApp
from tower.ui.widgets.threads import ThreadList

SAY = (
    "Reading the quarterly figures and comparing them with the sector median; the margin "
    "trend matters more than the level here, so I check three quarters before concluding. "
)


def write_project(root: Path, threads: int, rate: float) -> Path:
    steps = "\n".join(
        f'[[tasks.script]]\nsay = "{SAY * 2}"\ntool = "list_dir"\n' for _ in range(40)
    )
    toml = textwrap.dedent(
        f"""
        [project]
        name = "ui-load"
        copy_workspaces = false

        [limits]
        max_concurrent = {threads}

        [models."sim/small"]
        tokens_per_s = {rate}
        latency_s = 0.2
        wrong_rate = 0

        [[agents]]
        name = "analyst"
        cascade = ["sim/small"]
        tools = ["list_dir", "finish"]
        max_steps = 100

        [[tasks]]
        id = "load"
        agent = "analyst"
        prompt = "Analyse company {{n}}."
        workspace = "data"
        repeat = {threads}
        """
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "q.csv").write_text("quarter,margin\nQ1,0.12\n")
    (root / "tower.toml").write_text(toml + "\n" + steps)
    return root


async def measure(app: TowerApp, pilot: Any, keys: int, settle_s: float) -> dict[str, float]:
    """Presses `keys` cursor moves; returns latency percentiles, fps and CPU share."""
    threads = app.query_one(ThreadList)
    frames = 0
    waiting: dict[str, Any] = {}
    original = app._display

    def display(screen: Any, renderable: Any) -> None:
        nonlocal frames
        if renderable is not None:
            frames += 1
            fut = waiting.get("fut")
            if fut is not None and not fut.done() and threads.cursor == waiting["want"]:
                fut.set_result(time.perf_counter())
        original(screen, renderable)

    app._display = display  # type: ignore[method-assign]
    driver = app._driver
    assert driver is not None
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    wall0, cpu0, frames0 = time.perf_counter(), time.process_time(), frames
    for i in range(keys):
        key = "down" if (i // 10) % 2 == 0 else "up"
        want = threads.cursor + (1 if key == "down" else -1)
        want = min(max(want, 0), max(len(threads.rows) - 1, 0))
        fut = loop.create_future()
        waiting.update(fut=fut, want=want)
        t0 = time.perf_counter()
        driver.send_message(events.Key(key, None))
        t1 = await asyncio.wait_for(fut, 10)
        latencies.append((t1 - t0) * 1000)
        await asyncio.sleep(settle_s)  # a human's pace between keys, not synchronisation
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    app._display = original  # type: ignore[method-assign]
    latencies.sort()
    return {
        "p50": statistics.median(latencies),
        "p95": latencies[int(0.95 * (len(latencies) - 1))],
        "fps": (frames - frames0) / wall,
        "cpu": cpu / wall,
        "wall": wall,
    }


def _cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fleet:
    """The generated project's fleet, as `tower run` brings it up (core/fleet.up)."""

    def __init__(self, root: Path, db: Path) -> None:
        from tower.core import fleet

        up = fleet.up(root, "ui-load", db)
        self.socket, self.pid = up.socket, up.pid

    def cpu_s(self) -> float:
        return _cpu_s(self.pid) if self.pid is not None else 0.0


async def run(threads: int, keys: int, rate: float, size: tuple[int, int], in_process: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="tw-") as tmp:
        os.environ["XDG_RUNTIME_DIR"] = tmp  # the fleet's socket, private to this run
        root = write_project(Path(tmp) / "proj", threads, rate)
        project = load_project(root)
        db = Path(tmp) / "t.db"
        fleet = None if in_process else await asyncio.to_thread(Fleet, root, db)
        if fleet is None:
            app = TowerApp(project, db, watch=False)
        else:
            app = TowerApp(project, db, watch=False, attach=fleet.socket)
        async with app.run_test(size=size) as pilot:
            await asyncio.wait_for(app.booted.wait(), 60)
            control: Any = app.control
            core: Any = app.core
            # Baseline: the same app with every thread parked at a checkpoint.
            await core.call(control.pause_all)
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 60:
                live = [t for t in app.state().threads.values() if not t.state.ended]
                if len(live) == threads and all(t.state.value == "paused" for t in live):
                    break
                await pilot.pause(0.1)
            fleet_cpu0 = fleet.cpu_s() if fleet else 0.0
            idle = await measure(app, pilot, keys, 0.05)
            idle["fleet_cpu"] = (fleet.cpu_s() - fleet_cpu0) / idle["wall"] if fleet else 0.0
            await core.call(control.resume_all)
            t0 = time.perf_counter()
            while True:
                state = app.state()
                streaming = sum(1 for t in state.threads.values() if t.step >= 1)
                if streaming >= threads * 0.9 or time.perf_counter() - t0 > 120:
                    break
                await pilot.pause(0.2)
            seq0 = app.state().last_seq
            fleet_cpu0 = fleet.cpu_s() if fleet else 0.0
            loaded = await measure(app, pilot, keys, 0.05)
            ev_rate = (app.state().last_seq - seq0) / loaded["wall"]
            loaded["fleet_cpu"] = (fleet.cpu_s() - fleet_cpu0) / loaded["wall"] if fleet else 0.0
            running = sum(1 for t in app.state().threads.values() if not t.state.ended)
            if fleet is not None:
                await core.call(control.down)
            await app.shutdown()
        if fleet is not None and fleet.pid is not None:
            from tower.core.service import pid_alive

            t0 = time.perf_counter()
            while pid_alive(fleet.pid) and time.perf_counter() - t0 < 60:
                await asyncio.sleep(0.1)  # the fleet flushes its log and exits
    where = "in the TUI's process" if in_process else "as a service (the TUI attached)"
    print(
        f"{threads} threads ({running} live during the run), sim/small at {rate:g} tokens/s, "
        f"terminal {size[0]}x{size[1]}, {keys} keys; the fleet runs {where}"
    )
    print(f"events/s the view absorbed under load: {ev_rate:,.0f}")
    for name, m in (("idle  ", idle), ("loaded", loaded)):
        fleet_part = "" if in_process else f"   fleet CPU {m['fleet_cpu']:.2f} cores"
        print(
            f"{name}: key→frame p50 {m['p50']:6.1f} ms  p95 {m['p95']:6.1f} ms   "
            f"{m['fps']:5.1f} fps   TUI CPU {m['cpu']:.2f} cores{fleet_part}"
        )
    ratio = loaded["p95"] / max(idle["p95"], 1e-3)
    print(
        f"ratio p95 loaded/idle {ratio:.2f}x; targets: p95 {loaded['p95']:.0f} ms (<= 60), "
        f"ratio {ratio:.2f}x (<= 1.3)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1000)
    p.add_argument("--keys", type=int, default=60)
    p.add_argument("--rate", type=float, default=30.0, help="sim tokens/s per thread")
    p.add_argument("--size", default="200x60")
    p.add_argument(
        "--in-process", action="store_true", help="the core on a thread of the TUI's process"
    )
    a = p.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    return asyncio.run(run(a.threads, a.keys, a.rate, (w, h), a.in_process))


if __name__ == "__main__":
    sys.exit(main())
