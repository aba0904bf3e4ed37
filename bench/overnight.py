"""The overnight run: a large project of small tasks run unattended by a fleet, killed once.

A project of TASKS copies of one small task (read a file, then finish: two calls on the fast
`sim/small`) is started with the real CLI (`tower up DIR --db ...`, a `tower serve` in its
own process). While it runs, once a second, the bench reads what the person would:
`tower ls --json` (done, not started, throughput, ETA) and the service's RSS from /proc.
With `--kill-at F` it sends SIGKILL to the service once a fraction F of the tasks is done,
then runs `tower up DIR` again, which resumes the crashed fleet (as a person would).

At the end it checks the log (sqlite, read-only): every task copy became exactly one
thread, each thread ended once, and no model call was started twice under one id. It prints
RSS at each tenth of the run (memory should stay flat once the in-flight window is full),
tasks/s, calls/s, the resume's time and the CPU the service used per call.

    python bench/overnight.py [--tasks 100000] [--concurrent 200] [--kill-at 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tower.fleet_cli import progress_text

MODEL = "sim/small"


def write_project(root: Path, tasks: int, concurrent: int, workers: str = "auto") -> None:
    (root / "ws").mkdir(parents=True, exist_ok=True)
    (root / "ws" / "notes.txt").write_text("Household wages $58,420.00.\n", encoding="utf-8")
    (root / "tower.toml").write_text(
        f"""[project]
name = "overnight"
seed = 1
copy_workspaces = false

[limits]
max_concurrent = {concurrent}
workers = {workers if workers.isdigit() else f'"{workers}"'}

[[agents]]
name = "worker"
system_prompt = "Read the notes, then call finish."
cascade = ["{MODEL}"]
tools = ["read_file", "finish"]
max_steps = 4
max_tokens = 64

[[tasks]]
id = "job"
agent = "worker"
prompt = "Report the wages of household {{n}}."
workspace = "ws"
repeat = {tasks}

[[tasks.script]]
say = "Reading."
tool = "read_file"
args = {{ path = "notes.txt" }}

[[tasks.script]]
say = "Done."
tool = "finish"
args = {{ answer = "wages $58,420.00" }}
""",
        encoding="utf-8",
    )


def tower(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tower", *args], env=env, capture_output=True, text=True
    )


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The service's worker processes (its children), from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(d.name))
    return out


def fleet_row(env: dict[str, str]) -> dict[str, Any] | None:
    rows = json.loads(tower("ls", "--json", env=env).stdout or "[]")
    return next((r for r in rows if r["project"] == "overnight"), None)


def check_log(db: Path, tasks: int) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        spawned = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT thread) FROM events WHERE kind='thread_spawned'"
        ).fetchone()
        ends = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT thread) FROM events WHERE kind='thread_state' "
            "AND json_extract(payload, '$.state') IN ('done','failed','killed','skipped')"
        ).fetchone()
        done = conn.execute(
            "SELECT COUNT(DISTINCT thread) FROM events WHERE kind='thread_state' "
            "AND json_extract(payload, '$.state') = 'done'"
        ).fetchone()[0]
        calls = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT json_extract(payload, '$.call')) FROM events "
            "WHERE kind='llm_started'"
        ).fetchone()
        finished = conn.execute("SELECT COUNT(*) FROM events WHERE kind='llm_finished'").fetchone()
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    return {
        "tasks": tasks,
        "spawned": spawned[0],
        "spawned_distinct": spawned[1],
        "ended": ends[0],
        "ended_distinct": ends[1],
        "done": done,
        "calls_started": calls[0],
        "calls_distinct": calls[1],
        "calls_finished": finished[0],
        "events": events,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--concurrent", type=int, default=200)
    ap.add_argument("--kill-at", type=float, default=0.5, help="0 for no kill")
    ap.add_argument("--keep", help="keep the database at this path")
    ap.add_argument("--workers", default="auto", help='limits.workers ("auto", 0, N)')
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tower-night-"))
    runtime = Path(tempfile.mkdtemp(prefix="tw-"))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime), TOWER_SHELL_SANDBOX="0")
    root = tmp / "proj"
    write_project(root, args.tasks, args.concurrent, args.workers)
    db = Path(args.keep) if args.keep else tmp / "night.db"
    t0 = time.perf_counter()
    up = tower("up", str(root), "--db", str(db), env=env)
    if up.returncode != 0:
        sys.exit(f"tower up failed: {up.stderr}")
    session = up.stdout.strip()
    samples: list[tuple[float, int, float]] = []  # (elapsed, done, service rss)
    workers_rss: list[float] = []  # the worker processes' RSS, summed, per sample
    worker_cpu: dict[int, float] = {}  # each worker's CPU, as last read (they die with it)
    killed_at: float | None = None
    resumed_in: float | None = None
    cpu_before_kill = 0.0
    pid = 0
    last_print = 0.0
    while True:
        row = fleet_row(env)
        if row is None or row["status"] != "running":
            time.sleep(0.5)
            continue
        pid = int(row["pid"])
        done = int((row.get("threads") or {}).get("done", 0))
        elapsed = time.perf_counter() - t0
        samples.append((elapsed, done, rss_mb(pid)))
        kids = children(pid)
        workers_rss.append(sum(rss_mb(k) for k in kids))
        for k in kids:
            worker_cpu[k] = max(worker_cpu.get(k, 0.0), cpu_s(k))
        if elapsed - last_print >= 15:
            last_print = elapsed
            print(
                f"  {elapsed:6.0f} s: {done:,} done, {row.get('not_started', 0):,} not started, "
                f"tower ls: {progress_text(row.get('progress'))}, rss {samples[-1][2]:.0f} MB",
                flush=True,
            )
        if row.get("all_ended"):
            break
        if args.kill_at and killed_at is None and done >= args.tasks * args.kill_at:
            cpu_before_kill = cpu_s(pid)
            os.kill(pid, signal.SIGKILL)
            killed_at = elapsed
            print(f"  SIGKILL at {elapsed:.0f} s with {done:,} done", flush=True)
            while Path(f"/proc/{pid}").exists() and rss_mb(pid):
                time.sleep(0.05)
            r0 = time.perf_counter()
            again = tower("up", str(root), "--db", str(db), env=env)
            if again.returncode != 0:
                sys.exit(f"tower up (resume) failed: {again.stderr}")
            resumed_in = time.perf_counter() - r0
            print(f"  resumed in {resumed_in:.1f} s: {again.stderr.strip()}", flush=True)
            continue
        time.sleep(1.0)
    wall = time.perf_counter() - t0
    cpu = cpu_before_kill + cpu_s(pid)
    for k in children(pid):
        worker_cpu[k] = max(worker_cpu.get(k, 0.0), cpu_s(k))
    wcpu = sum(worker_cpu.values())
    peak = max(s[2] for s in samples)
    down = tower("down", session, env=env)
    if down.returncode != 0:
        print(f"tower down failed: {down.stderr.strip()}")
    log = check_log(db, args.tasks)
    print(
        f"{args.tasks:,} tasks ({args.concurrent} at once): wall {wall:.0f} s, "
        f"{args.tasks / wall:.1f} tasks/s, {log['calls_finished'] / wall:.1f} calls/s, "
        f"service cpu {cpu:.0f} s ({cpu / max(log['calls_finished'], 1) * 1000:.2f} ms/call), "
        f"peak rss {peak:.0f} MB, {log['events']:,} events"
    )
    if worker_cpu:
        calls = max(log["calls_finished"], 1)
        print(
            f"workers: {len(worker_cpu)} process(es) seen, cpu {wcpu:.0f} s; service + workers "
            f"{(cpu + wcpu) / calls * 1000:.2f} ms/call; "
            f"workers' rss peak {max(workers_rss):.0f} MB"
        )
    print("rss by progress (done → MB):")
    for tenth in range(1, 11):
        want = args.tasks * tenth / 10
        s = next((s for s in samples if s[1] >= want), samples[-1])
        print(f"  {tenth * 10:3d} %: {s[1]:>9,} done  {s[2]:7.0f} MB  at {s[0]:.0f} s")
    print("log check:", json.dumps(log))
    ok = (
        log["spawned"] == log["spawned_distinct"] == args.tasks
        and log["ended"] == log["ended_distinct"] == args.tasks
        and log["calls_started"] == log["calls_distinct"]
    )
    print("every task exactly once, no call id twice:", "yes" if ok else "NO")
    if killed_at is not None:
        print(f"killed at {killed_at:.0f} s, `tower up` resumed it in {resumed_in:.1f} s")


if __name__ == "__main__":
    main()
