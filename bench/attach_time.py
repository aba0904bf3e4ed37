"""Attaching to a big fleet: how soon a view of a session with 1,000,000 events shows its
first frame.

Builds the session from a real one: a sim thread that reads 100 notes is run for real
(`tower run --headless`, ~500 events), and its events are recorded again under 2,000 thread
ids into one session (1,000,000 events), left unended as a crash leaves it. `tower up`
resumes that session as a service (folding its log once, timed), and views attach to it:
  - in this process: TowerApp(attach=…) from construction to the first frame whose thread
    list shows the fleet's threads (connect, the snapshot, its fold, the draw);
  - end to end: `tower attach` started in tmux, to the first screen that shows a thread row
    (includes the interpreter's start and imports; read by polling the pane);
each beside the same measure for the small fleet of the real run (one thread, ~500 events),
in the same run, and their ratio. Target: the first frame within 1 s at 1,000,000 events.

    python bench/attach_time.py [--events 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tower.core import fleet
from tower.core.events import Event, EventKind
from tower.core.project import load_project
from tower.core.service import pid_alive
from tower.core.store import Store

NOTES = 100
SIZE = (200, 50)
# A tmux server of the bench's own, kept up by a holder session (a server whose last session
# ends exits, and a `tmux new` racing that exit fails).
TMUX = ["tmux", "-L", f"tower-bench-{os.getpid()}"]


def write_project(root: Path) -> Path:
    (root / "ws").mkdir(parents=True)
    for i in range(NOTES):
        (root / "ws" / f"f{i}.txt").write_text(f"note {i}\n")
    steps = "\n".join(
        f'[[tasks.script]]\nsay = "Reading note {i}."\ntool = "read_file"\n'
        f'args = {{ path = "f{i}.txt" }}\n'
        for i in range(NOTES)
    )
    (root / "tower.toml").write_text(
        f"""
[project]
name = "attach-bench"
seed = 1

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["read_file", "finish"]
max_steps = {NOTES * 2}

[[tasks]]
id = "t"
agent = "a"
prompt = "Read every note."
workspace = "ws"

{steps}

[[tasks.script]]
tool = "finish"
args = {{ answer = "done" }}
"""
    )
    return root


def template(db: Path) -> tuple[str, list[tuple[float, str, str]]]:
    """The real run's session_started payload, and its thread's events (ts, kind, payload)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT ts, kind, thread, payload FROM events ORDER BY seq").fetchall()
    start = next(p for _, k, _, p in rows if k == EventKind.SESSION_STARTED.value)
    return start, [(ts, k, p) for ts, k, th, p in rows if th is not None]


async def replicate(db: Path, root: Path, events: int) -> tuple[str, int]:
    """One session of `events` events: the template thread's, under many thread ids; left
    unended with a dead pid, as a SIGKILLed service leaves its log."""
    start, thread = template(db)
    copies = max(1, round((events - 1) / len(thread)))
    session = "bench-" + time.strftime("%Y%m%d-%H%M%S")
    store = await Store.open(db)
    try:
        await store.create_session(session, "attach-bench", str(root), time.time(), {})
        store.start_writer(session)
        payload = json.loads(start)
        payload["session"] = session
        seq = 1
        store.append(Event(seq, time.time(), EventKind.SESSION_STARTED, None, payload))
        for k in range(copies):
            tid = f"t{k}"
            for ts, kind, text in thread:
                seq += 1
                store.append(Event(seq, ts, EventKind(kind), tid, {}), payload_json=text)
            if k % 100 == 99:
                await store.flush()
        await store.flush()
    finally:
        await store.close()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with sqlite3.connect(db) as conn:  # its service was killed: crashed, resumable
        conn.execute("UPDATE sessions SET pid = ? WHERE id = ?", (dead.pid, session))
    return session, seq


async def first_frame(project: Any, socket: Path) -> float:
    """Seconds from TowerApp(attach=…) to the first frame showing the fleet's threads."""
    from tower.ui.app import TowerApp

    t0 = time.perf_counter()
    app = TowerApp(project, None, watch=False, attach=socket)
    loop = asyncio.get_running_loop()
    shown: asyncio.Future[float] = loop.create_future()
    original = app._display

    def display(screen: Any, renderable: Any) -> None:
        original(screen, renderable)
        rows = getattr(getattr(app, "threads_list", None), "rows", None)
        if renderable is not None and rows and not shown.done():
            shown.set_result(time.perf_counter())

    app._display = display  # type: ignore[method-assign]
    async with app.run_test(size=SIZE):
        t1 = await asyncio.wait_for(shown, 60)
        await app.shutdown()
    return t1 - t0


def tmux_first_frame(session: str, first: str, env: dict[str, str]) -> float:
    """Seconds from starting `tower attach` in a tmux pane to the first screen with a
    row for thread `first` (polled every 5 ms; includes the interpreter's start)."""
    name = f"attach-{os.getpid()}"
    cmd = f"{sys.executable} -m tower attach {session}"
    env_args = [f"{k}={v}" for k, v in env.items()]
    t0 = time.perf_counter()
    subprocess.run(
        [*TMUX, "new", "-d", "-s", name, "-x", str(SIZE[0]), "-y", str(SIZE[1]), "env",
         *env_args, *cmd.split()],
        check=True,
    )  # fmt: skip
    try:
        while time.perf_counter() - t0 < 60:
            pane = subprocess.run(
                [*TMUX, "capture-pane", "-p", "-t", name], capture_output=True, text=True
            ).stdout
            if any(line.lstrip("│ ●").startswith(first + " ") for line in pane.splitlines()):
                return time.perf_counter() - t0
            time.sleep(0.005)  # polling a pane from outside: there is no event to wait on
        raise TimeoutError("tower attach never showed a thread")
    finally:
        subprocess.run([*TMUX, "kill-session", "-t", name], check=False)


def down(up: fleet.Up) -> None:
    done = subprocess.run([sys.executable, "-m", "tower", "down", up.session],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        print(done.stderr.strip(), file=sys.stderr)
        return
    while up.pid is not None and pid_alive(up.pid):
        time.sleep(0.05)


async def main(events: int, repeat: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tw-"))
    os.environ["XDG_RUNTIME_DIR"] = str(tmp / "run")
    (tmp / "run").mkdir()
    env = {"XDG_RUNTIME_DIR": str(tmp / "run"), "TERM": "xterm-256color"}
    ups: list[fleet.Up] = []
    subprocess.run([*TMUX, "new", "-d", "-s", "hold"], check=True)
    try:
        root = write_project(tmp / "proj")
        project = load_project(root)
        small_db, big_db = tmp / "small.db", tmp / "big.db"
        # The real run: one thread, recorded; it is also the small fleet (it stays up).
        small = await asyncio.to_thread(fleet.up, root, "attach-bench", small_db)
        ups.append(small)
        while json.loads(
            subprocess.run([sys.executable, "-m", "tower", "ls", "--json"], capture_output=True,
                           text=True).stdout
        )[0].get("all_ended") is not True:  # fmt: skip
            await asyncio.sleep(0.2)  # the real run finishing (a CLI round trip each)
        with sqlite3.connect(small_db) as src, sqlite3.connect(big_db) as dst:
            src.backup(dst)  # the live log, its WAL included
        t0 = time.perf_counter()
        session, n = await replicate(big_db, root, events)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        big = await asyncio.to_thread(fleet.up, root, "attach-bench", big_db, session)
        ups.append(big)
        resumed = time.perf_counter() - t0
        with sqlite3.connect(small_db) as conn:
            small_n = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        print(f"built a session of {n:,} events in {built:.1f} s; `tower up` resumed it "
              f"(its log folded) in {resumed:.1f} s")  # fmt: skip
        rows = []
        for name, up, count, first in (("small", small, small_n, "t"), ("big", big, n, "t0")):
            inproc = [await first_frame(project, up.socket) for _ in range(repeat)]
            tmux = [tmux_first_frame(up.session, first, env) for _ in range(repeat)]
            rows.append((name, count, inproc, tmux))
        for name, count, inproc, tmux in rows:
            print(
                f"{name:5} fleet, {count:>9,} events: view's first frame median "
                f"{statistics.median(inproc) * 1000:6.0f} ms (max {max(inproc) * 1000:.0f}); "
                f"`tower attach` in tmux median {statistics.median(tmux) * 1000:6.0f} ms "
                f"(max {max(tmux) * 1000:.0f})"
            )
        (_, _, s_in, s_tm), (_, _, b_in, b_tm) = rows
        print(
            f"ratio big/small: view {statistics.median(b_in) / statistics.median(s_in):.2f}x, "
            f"tower attach {statistics.median(b_tm) / statistics.median(s_tm):.2f}x; target: "
            f"first frame within 1 s at {n:,} events (max {max(b_tm):.2f} s end to end)"
        )
    finally:
        for up in ups:
            if up.pid is not None and pid_alive(up.pid):
                down(up)
        subprocess.run([*TMUX, "kill-server"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    asyncio.run(main(a.events, a.repeat))
