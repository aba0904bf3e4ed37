"""Many threads in flight at once: does tower's own load make calls time out?

A project of THREADS copies of one task (three scripted steps: list_dir, read_file, finish)
on a fast sim model (sim/small: 0.05 s to first token, 400 tokens/s), with
`[limits] max_concurrent = THREADS`, is run by the real CLI in a subprocess
(`python -m tower run DIR --headless --approve all --json`) once per configuration:

- fixed:    `adaptive = false`: every thread's call is admitted at once (the baseline);
- adaptive: calls in flight follow the event loop's lag (tower/core/admission.py);
- legacy:   no `[limits]` keys but max_concurrent, for a tower without them
            (`--pythonpath` pointing at an older checkout).

For each it prints wall time, completed calls/s, p50/p95 call time (as the thread saw it,
from `llm_finished.seconds`), calls that failed "no answer within the call timeout",
threads done, peak RSS and CPU seconds of the run. The last lines are ratios against the
first configuration of the same run.

    python bench/scale.py [--threads 10000] [--configs fixed,adaptive] [--pythonpath DIR]

Measured on 2026-11-30 (2 cores; legacy = the release before the call gate, a worktree at
27eb4a9 given as --pythonpath), 10,000 threads, 30,000 calls each run:

    legacy:   176.9 calls/s, call p50 48.1 s, p95 54.8 s, 1,932 timeouts
    fixed:    181.8 calls/s, call p50 46.8 s, p95 55.8 s, 0 timeouts (provider-time timeouts)
    adaptive: 192.3 calls/s, call p50 0.42 s, p95 1.50 s, 0 timeouts
    (the gate in spawn order, a second run: fixed 176.2 calls/s, p50 51.3 s; adaptive
    201.6 calls/s, p50 0.43 s, p95 1.27 s, 0 timeouts; adaptive/fixed calls/s x1.14)
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "sim/small"
FILES = {"notes.txt": "Household 12: wages $58,420.00, withheld $4,890.00.\n" * 4}


def write_project(root: Path, threads: int, config: str, timeout_s: float) -> None:
    (root / "ws").mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (root / "ws" / name).write_text(text, encoding="utf-8")
    limits = f"max_concurrent = {threads}\n"
    if config == "fixed":
        limits += "adaptive = false\n"
    elif config == "adaptive":
        limits += "adaptive = true\nworkers = 0\n"  # every call in tower's own process
    elif config.startswith("workers"):  # "workers": one per core; "workers3": three
        workers = config[7:] or '"auto"'
        limits += f"adaptive = true\nworkers = {workers}\n"
    steps = [
        ("Listing the workspace.", "list_dir", {"path": "."}),
        ("Reading the notes.", "read_file", {"path": "notes.txt"}),
        ("Done.", "finish", {"answer": "wages $58,420.00"}),
    ]
    script = "\n".join(
        f"[[tasks.script]]\nsay = {json.dumps(say)}\ntool = {json.dumps(tool)}\n"
        f"args = {json.dumps(args).replace(':', ' =')}\n"
        for say, tool, args in steps
    )
    (root / "tower.toml").write_text(
        f"""[project]
name = "bench_scale"
seed = 1
copy_workspaces = false
call_timeout_s = {timeout_s}

[limits]
{limits}
[[agents]]
name = "worker"
system_prompt = "List your workspace, read the notes, then call finish."
cascade = ["{MODEL}"]
tools = ["list_dir", "read_file", "finish"]
max_steps = 6
max_tokens = 256

[[tasks]]
id = "job"
agent = "worker"
prompt = "Report the wages of household {{n}}."
workspace = "ws"
repeat = {threads}
{script}""",
        encoding="utf-8",
    )


def run(config: str, threads: int, timeout_s: float, pythonpath: str | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tower-scale-") as tmp:
        root = Path(tmp) / "proj"
        write_project(root, threads, config, timeout_s)
        db = Path(tmp) / "s.db"
        env = dict(os.environ, TOWER_SHELL_SANDBOX="0")
        if pythonpath and config == "legacy":
            env["PYTHONPATH"] = pythonpath
        cmd = [sys.executable, "-m", "tower", "run", str(root), "--headless"]
        cmd += ["--approve", "all", "--json", "--db", str(db)]
        t0 = time.perf_counter()
        # cwd is the temp folder: `-m` puts the cwd first on sys.path, before PYTHONPATH.
        proc = subprocess.Popen(
            cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        # communicate() reaped the child; its rusage is the children's total so far, so
        # each configuration reads the difference.
        if proc.returncode not in (0, 1):
            sys.exit(f"{config}: tower exited {proc.returncode}: {err.decode()[-2000:]}")
        summary = json.loads(out)
        conn = sqlite3.connect(db)
        try:
            sid = summary["session"]
            secs = [
                json.loads(p)["seconds"]
                for (p,) in conn.execute(
                    "SELECT payload FROM events WHERE session=? AND kind='llm_finished'", (sid,)
                )
            ]
            timeouts = sum(
                "call timeout" in json.loads(p).get("error", "")
                for (p,) in conn.execute(
                    "SELECT payload FROM events WHERE session=? AND kind='llm_failed'", (sid,)
                )
            )
        finally:
            conn.close()
    secs.sort()
    q = statistics.quantiles(secs, n=20) if len(secs) >= 20 else [0.0] * 19
    return {
        "wall_s": wall,
        "calls": len(secs),
        "calls_per_s": len(secs) / wall,
        "p50_s": statistics.median(secs) if secs else 0.0,
        "p95_s": q[18],
        "timeouts": timeouts,
        "done": summary["threads"].get("done", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=10_000)
    ap.add_argument("--configs", default="fixed,adaptive")
    ap.add_argument("--timeout", type=float, default=60.0, help="call_timeout_s (default 60)")
    ap.add_argument("--pythonpath", help="the checkout of tower that 'legacy' runs")
    args = ap.parse_args()
    rows: list[tuple[str, dict[str, float], float, float]] = []
    for config in args.configs.split(","):
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        fig = run(config, args.threads, args.timeout, args.pythonpath)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rss_mb = after.ru_maxrss / 1024  # the largest child so far
        rows.append((config, fig, cpu, rss_mb))
        print(
            f"{config:>9}: {args.threads:,} threads, wall {fig['wall_s']:.1f} s, "
            f"{fig['calls']:,} calls, {fig['calls_per_s']:.1f} calls/s, "
            f"call p50 {fig['p50_s']:.3f} s p95 {fig['p95_s']:.3f} s, "
            f"timeouts {fig['timeouts']:,}, done {fig['done']:,}, "
            f"cpu {cpu:.1f} s, peak rss (max so far) {rss_mb:.0f} MB",
            flush=True,
        )
    base_name, base, _, _ = rows[0]
    for config, fig, _, _ in rows[1:]:
        print(
            f"{config} / {base_name}: calls/s x{fig['calls_per_s'] / base['calls_per_s']:.2f}, "
            f"p95 call time x{fig['p95_s'] / max(base['p95_s'], 1e-9):.3f}, "
            f"timeouts {fig['timeouts']:,} vs {base['timeouts']:,}"
        )


if __name__ == "__main__":
    main()
