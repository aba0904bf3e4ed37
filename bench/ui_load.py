"""The TUI under load: 1,000 concurrent sim threads streaming while keys are pressed.

Runs TowerApp headless (App.run_test) on a generated project whose threads stream text
continuously on `sim/small`, presses cursor keys and prints:
  - keypress-to-rendered-change latency p50/p95 (key sent to the driver → the first frame in
    which the thread list shows the moved cursor),
  - frames per second (compositor updates handed to the display),
  - the process's CPU share (process CPU time / wall time, in cores),
each for an idle baseline (the same app, same keys, no threads) measured in the same run and
under load, then the ratios. Targets under load: p95 <= 100 ms and CPU <= 1 core.

    python bench/ui_load.py [--threads 1000] [--keys 60] [--rate 30] [--size 200x60]
"""

from __future__ import annotations

import argparse
import asyncio
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
    }


async def run(threads: int, keys: int, rate: float, size: tuple[int, int]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_project(Path(tmp) / "proj", threads, rate)
        project = load_project(root)
        app = TowerApp(project, Path(tmp) / "t.db", watch=False)
        async with app.run_test(size=size) as pilot:
            await asyncio.wait_for(app.booted.wait(), 60)
            # Baseline: the same app before its threads exist (they are spawned after boot).
            await app.core.call(app.control.pause_all)  # type: ignore[union-attr]
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 60:  # every thread parked at a checkpoint
                if all(t.state.value == "paused" for t in app.state().threads.values()):
                    break
                await pilot.pause(0.1)
            idle = await measure(app, pilot, keys, 0.05)
            await app.core.call(app.control.resume_all)  # type: ignore[union-attr]
            t0 = time.perf_counter()
            while True:
                state = app.state()
                streaming = sum(1 for t in state.threads.values() if t.step >= 1)
                if streaming >= threads * 0.9 or time.perf_counter() - t0 > 120:
                    break
                await pilot.pause(0.2)
            events_before = app.session.bus.seq  # type: ignore[union-attr]
            load_t0 = time.perf_counter()
            loaded = await measure(app, pilot, keys, 0.05)
            ev_rate = (app.session.bus.seq - events_before) / (time.perf_counter() - load_t0)  # type: ignore[union-attr]
            running = sum(1 for t in app.state().threads.values() if not t.state.ended)
            await app.shutdown()
    print(
        f"{threads} threads ({running} live during the run), sim/small at {rate:g} tokens/s, "
        f"terminal {size[0]}x{size[1]}, {keys} keys"
    )
    print(f"events/s under load: {ev_rate:,.0f}")
    for name, m in (("idle  ", idle), ("loaded", loaded)):
        print(
            f"{name}: key→frame p50 {m['p50']:6.1f} ms  p95 {m['p95']:6.1f} ms   "
            f"{m['fps']:5.1f} fps   CPU {m['cpu']:.2f} cores"
        )
    print(
        f"ratio p95 loaded/idle {loaded['p95'] / max(idle['p95'], 1e-3):.1f}x; "
        f"targets: p95 {loaded['p95']:.0f} ms (<= 100), CPU {loaded['cpu']:.2f} cores (<= 1)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1000)
    p.add_argument("--keys", type=int, default=60)
    p.add_argument("--rate", type=float, default=30.0, help="sim tokens/s per thread")
    p.add_argument("--size", default="200x60")
    a = p.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    return asyncio.run(run(a.threads, a.keys, a.rate, (w, h)))


if __name__ == "__main__":
    sys.exit(main())
