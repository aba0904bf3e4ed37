"""Completed LLM calls per second through tower's runtime, against bare litellm in the same run.

tower: a project built in code (one agent on cascade ["sim/instant"], tools list_dir,
read_file and finish; one task with repeat=THREADS whose script makes STEPS-1 list_dir /
read_file calls and then calls finish; limits.max_concurrent = THREADS; no budget), run with
tower.core.session.run_headless on a temp database with approve="all". Rate = llm_finished
events / wall time of run_headless (store open, spawning, all agent loops, close).

bare: THREADS concurrent asyncio tasks, each making STEPS sequential
`litellm.acompletion(model="sim/instant", messages=..., mock_response=..., stream=True)` calls
and consuming the stream, with a message history that grows as the agent's does. The mock
reply is a ModelResponse carrying the same text and tool call as the script step, so litellm
streams it as two chunks (tower's sim streams three: text, tool call, usage).

A third figure, litellm + sim, calls the sim provider directly (no mock, no tower) with the
same script, to split tower's own overhead from the sim provider's.

    python bench/runtime_overhead.py [--threads 500] [--steps 5] [--copy-workspaces]

The last line is the ratio tower / bare (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tower.core import llm
from tower.core.project import Project
from tower.core.session import run_headless
from tower.core.tools import tool_schemas

TARGET = 0.7
CPU_TARGET_MS = 2.5
MODEL = "sim/instant"
TOOLS = ["list_dir", "read_file", "finish"]
SYSTEM = (
    "You are a careful bookkeeping agent. List your workspace, read the documents you need "
    "and state the figures you find, then call finish with a one-line summary."
)
PROMPT = "Check the documents of household {n} and report the total wages and tax withheld."
FILES = {
    "w2_employee.txt": "Form W-2\nbox 1 wages: $58,420.00\nbox 2 federal tax withheld: $4,890.00\n",
    "1099int_bank.txt": "Form 1099-INT\nFirst Harbor Bank\nbox 1 interest income: $212.48\n",
    "notes.txt": "Married filing jointly. Two children lived with them all year.\n" * 3,
}


def script(steps: int) -> list[dict[str, Any]]:
    """STEPS model calls: list_dir, then read_file calls over the files, then finish."""
    names = sorted(FILES)
    out: list[dict[str, Any]] = []
    for k in range(steps - 1):
        if k % 4 == 0:
            out.append(
                {
                    "say": "Listing the workspace to see the documents.",
                    "tool": "list_dir",
                    "args": {"path": "."},
                }
            )
        else:
            name = names[(k - 1) % len(names)]
            out.append(
                {
                    "say": f"Reading {name} and noting its figures.",
                    "tool": "read_file",
                    "args": {"path": name},
                }
            )
    out.append(
        {
            "say": "That is all I need.",
            "tool": "finish",
            "args": {"answer": "wages $58,420.00, withheld $4,890.00"},
        }
    )
    return out


def build_project(root: Path, threads: int, steps: int, copy: bool) -> Project:
    ws = root / "ws"
    ws.mkdir(parents=True, exist_ok=True)
    for name, text in FILES.items():
        (ws / name).write_text(text, encoding="utf-8")
    return Project.model_validate(
        {
            "project": {"name": "bench_runtime", "seed": 1, "copy_workspaces": copy},
            "limits": {"max_concurrent": threads, "workers": 0},
            "agents": [
                {
                    "name": "worker",
                    "system_prompt": SYSTEM,
                    "cascade": [MODEL],
                    "tools": TOOLS,
                    "max_steps": steps + 2,
                    "max_tokens": 512,
                }
            ],
            "tasks": [
                {
                    "id": "job",
                    "agent": "worker",
                    "prompt": PROMPT,
                    "title": "household {n}",
                    "workspace": "ws",
                    "repeat": threads,
                    "script": script(steps),
                }
            ],
            "root": root,
        }
    )


async def run_tower(project: Project, db: Path) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    result = await run_headless(project, db, approve="all")
    wall = time.perf_counter() - t0
    conn = sqlite3.connect(db)
    try:
        (calls,) = conn.execute(
            "SELECT count(*) FROM events WHERE session = ? AND kind = 'llm_finished'",
            (result.summary["session"],),
        ).fetchone()
    finally:
        conn.close()
    done = result.summary["threads"]["done"]
    return wall, calls, done


def _mock_reply(litellm: Any, step: dict[str, Any], call_id: str) -> Any:
    return litellm.ModelResponse(
        choices=[
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": step["say"],
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": step["tool"],
                                "arguments": json.dumps(step["args"]),
                            },
                        }
                    ],
                },
            }
        ]
    )


async def _consume(resp: Any) -> tuple[str, int]:
    text: list[str] = []
    chunks = 0
    async for chunk in resp:
        chunks += 1
        if chunk.choices and chunk.choices[0].delta is not None:
            content = chunk.choices[0].delta.content
            if content:
                text.append(content)
    return "".join(text), chunks


async def run_bare(threads: int, steps: int, use_sim: bool) -> tuple[float, int, int]:
    """THREADS tasks x STEPS sequential calls; mock replies, or the sim provider itself."""
    litellm = llm.load_litellm()
    plan = script(steps)
    tools = tool_schemas(TOOLS)
    counts = {"calls": 0, "chunks": 0}
    # Built once, outside the clock: litellm turns each into fresh stream chunks per call.
    replies = [_mock_reply(litellm, step, f"call_{k}") for k, step in enumerate(plan)]

    async def agent(n: int) -> None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT.replace("{n}", str(n))},
        ]
        for k, step in enumerate(plan):
            call_id = f"call_{n}_{k}"
            if use_sim:
                resp = await litellm.acompletion(
                    model=MODEL,
                    messages=messages,
                    tools=tools,
                    stream=True,
                    metadata={"tower_sim": {"script": plan, "thread": f"job-{n}", "seed": 1}},
                )
            else:
                resp = await litellm.acompletion(
                    model=MODEL,
                    messages=messages,
                    mock_response=replies[k],
                    stream=True,
                )
            text, chunks = await _consume(resp)
            if text != step["say"]:
                raise SystemExit(f"unexpected reply {text!r} for step {k}")
            counts["calls"] += 1
            counts["chunks"] += chunks
            messages.append(
                {
                    "role": "assistant",
                    "content": text,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": step["tool"],
                                "arguments": json.dumps(step["args"]),
                            },
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": "ok\n" * 4})

    t0 = time.perf_counter()
    await asyncio.gather(*(agent(n) for n in range(1, threads + 1)))
    return time.perf_counter() - t0, counts["calls"], counts["chunks"]


async def warm_up() -> None:
    """One call down each path, so litellm's first-call costs land outside the clocks."""
    await run_bare(1, 2, use_sim=False)
    await run_bare(1, 2, use_sim=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=500, help="concurrent threads (500)")
    ap.add_argument("--steps", type=int, default=5, help="model calls per thread, >= 2 (5)")
    ap.add_argument(
        "--copy-workspaces",
        action="store_true",
        help="give each thread a private copy of the workspace (tower's default for projects)",
    )
    args = ap.parse_args(argv)
    threads, steps = max(args.threads, 1), max(args.steps, 2)

    t0 = time.perf_counter()
    llm.load_litellm()
    print(f"litellm import {time.perf_counter() - t0:.1f} s (not timed below)")
    asyncio.run(warm_up())
    with tempfile.TemporaryDirectory(prefix="tower-bench-") as tmp:
        project = build_project(Path(tmp) / "project", threads, steps, args.copy_workspaces)
        c0 = time.process_time()
        t_tower, calls, done = asyncio.run(run_tower(project, Path(tmp) / "tower.db"))
        cpu_tower = time.process_time() - c0
    expected = threads * steps
    if calls != expected or done != threads:
        print(f"warning: tower finished {calls} calls / {done} threads, expected {expected}")
    c0 = time.process_time()
    t_sim, sim_calls, sim_chunks = asyncio.run(run_bare(threads, steps, use_sim=True))
    cpu_sim = time.process_time() - c0
    c0 = time.process_time()
    t_bare, bare_calls, bare_chunks = asyncio.run(run_bare(threads, steps, use_sim=False))
    cpu_bare = time.process_time() - c0

    tower_rate = calls / t_tower
    bare_rate = bare_calls / t_bare
    print(f"{threads} threads x {steps} calls, model {MODEL}")
    print(
        f"tower          : {tower_rate:8.0f} calls/s  ({calls} calls in {t_tower:.2f} s, "
        f"run_headless wall time, copy_workspaces={args.copy_workspaces})"
    )
    print(
        f"litellm + sim  : {sim_calls / t_sim:8.0f} calls/s  ({sim_calls} calls in {t_sim:.2f} s, "
        f"{sim_chunks / max(sim_calls, 1):.1f} chunks/call; no tower)"
    )
    print(
        f"bare (mock)    : {bare_rate:8.0f} calls/s  ({bare_calls} calls in {t_bare:.2f} s, "
        f"{bare_chunks / max(bare_calls, 1):.1f} chunks/call)"
    )
    print(f"ratio {tower_rate / bare_rate:.2f} (target >= {TARGET})")
    per_call = {
        "tower": cpu_tower / max(calls, 1),
        "litellm + sim": cpu_sim / max(sim_calls, 1),
        "bare (mock)": cpu_bare / max(bare_calls, 1),
    }
    print(
        "CPU per call (every thread of the process): "
        + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in per_call.items())
    )
    print(
        f"tower per-call CPU {per_call['tower'] * 1000:.2f} ms (target <= {CPU_TARGET_MS}), "
        f"{per_call['tower'] / per_call['bare (mock)']:.2f}x bare litellm.acompletion"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
