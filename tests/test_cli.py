"""The real CLI in subprocesses: sample projects headless (checked from the database), the
exact JSON forms, and every expected failure as one line with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tower.core.events import Event, EventKind
from tower.core.state import fold, summary

from .conftest import REPO, write_project

SAMPLES = ["tax_return", "code_review", "market_analysis"]


def tower(*args: str, env: dict[str, str] | None = None, timeout: float = 120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tower", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=REPO,
    )


def db_events(db: Path, session: str) -> list[Event]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, ts, kind, thread, payload FROM events WHERE session = ? ORDER BY seq",
            (session,),
        ).fetchall()
    return [Event.from_row(*r) for r in rows]


def session_row(db: Path, session: str) -> tuple:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT status, ended FROM sessions WHERE id = ?", (session,)
        ).fetchone()


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_project_runs_headless_and_the_log_is_complete(name, tmp_path) -> None:
    db = tmp_path / "t.db"
    proc = tower(
        "run",
        f"sample_projects/{name}",
        "--headless",
        "--approve",
        "all",
        "--json",
        "--db",
        str(db),
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout
    out = json.loads(lines[0])
    assert set(out) == {"session", "threads", "cost_usd", "budget_usd", "tokens", "events"}
    assert set(out["threads"]) == {"done", "failed", "killed"}
    events = db_events(db, out["session"])
    assert len(events) == out["events"]  # every emitted event is in the database
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind is EventKind.SESSION_ENDED
    assert summary(fold(events)) == out  # the log alone reproduces the run's summary
    assert session_row(db, out["session"])[0] == "clean"
    assert out["budget_usd"] is None or out["cost_usd"] <= out["budget_usd"]
    spawned = sum(1 for e in events if e.kind is EventKind.THREAD_SPAWNED)
    assert sum(out["threads"].values()) == spawned


def test_tax_return_costs_at_most_five_cents_a_return(tmp_path) -> None:
    proc = tower(
        "run",
        "sample_projects/tax_return",
        "--headless",
        "--approve",
        "all",
        "--json",
        "--db",
        str(tmp_path / "t.db"),
    )
    out = json.loads(proc.stdout)
    assert out["threads"]["done"] == 5
    assert out["cost_usd"] / 5 <= 0.05
    events = db_events(tmp_path / "t.db", out["session"])
    questions = [
        e for e in events if e.kind is EventKind.INBOX_OPENED and e.payload["kind"] == "question"
    ]
    assert len(questions) == 5  # each household flags its ambiguous item for a human


def test_market_analysis_shows_queueing_and_the_budget_stop(tmp_path) -> None:
    proc = tower(
        "run",
        "sample_projects/market_analysis",
        "--headless",
        "--json",
        "--db",
        str(tmp_path / "t.db"),
    )
    out = json.loads(proc.stdout)
    assert out["threads"]["done"] > 0 and out["threads"]["failed"] > 0
    assert out["cost_usd"] <= out["budget_usd"]
    state = fold(db_events(tmp_path / "t.db", out["session"]))
    failed = [t for t in state.threads.values() if t.state == "failed"]
    assert failed and all(t.reason == "budget" for t in failed)
    events = db_events(tmp_path / "t.db", out["session"])
    # concurrency: never more than 16 threads between their start and their end
    peak = 0
    started: set[str] = set()
    for e in events:
        if e.kind is EventKind.THREAD_STATE:
            if e.payload["state"] in ("done", "failed", "killed"):
                started.discard(e.thread or "")
            else:
                started.add(e.thread or "")
            peak = max(peak, len(started))
    assert 1 < peak <= 16


def test_approve_none_denies_writes(tmp_path) -> None:
    proc = tower(
        "run",
        "sample_projects/code_review",
        "--headless",
        "--approve",
        "none",
        "--json",
        "--db",
        str(tmp_path / "t.db"),
    )
    out = json.loads(proc.stdout)
    events = db_events(tmp_path / "t.db", out["session"])
    writes = [
        e for e in events if e.kind is EventKind.TOOL_RESULT and e.payload["tool"] == "write_file"
    ]
    assert writes and all(not e.payload["ok"] for e in writes)


def test_text_output_has_a_line_per_state_change_and_a_summary(tmp_path) -> None:
    proc = tower(
        "run",
        "sample_projects/code_review",
        "--headless",
        "--approve",
        "all",
        "--db",
        str(tmp_path / "t.db"),
    )
    assert proc.returncode == 0
    assert "done" in proc.stdout and "threads: " in proc.stdout and "cost $" in proc.stdout
    assert proc.stderr == ""


def test_sessions_lists_runs_as_rows_and_json(tmp_path) -> None:
    db = tmp_path / "t.db"
    out = json.loads(
        tower(
            "run",
            "sample_projects/code_review",
            "--headless",
            "--approve",
            "all",
            "--json",
            "--db",
            str(db),
        ).stdout
    )
    rows = json.loads(tower("sessions", "--db", str(db), "--json").stdout)
    assert [r["id"] for r in rows] == [out["session"]]
    row = rows[0]
    assert set(row) == {"id", "project", "started", "ended", "status", "threads", "cost_usd"}
    assert row["status"] == "clean" and row["project"] == "code_review"
    assert row["threads"] == sum(out["threads"].values())
    assert row["cost_usd"] == pytest.approx(out["cost_usd"])
    text = tower("sessions", "--db", str(db)).stdout
    assert out["session"] in text and "clean" in text


def test_interrupt_flushes_every_event_and_closes_cleanly(tmp_path) -> None:
    db = tmp_path / "t.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tower",
            "run",
            "sample_projects/market_analysis",
            "--headless",
            "--db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    seen = 0
    for line in proc.stdout:  # wait until threads are visibly running
        if " running" in line:
            seen += 1
            if seen >= 3:
                break
    proc.send_signal(signal.SIGINT)
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 130
    assert "(interrupted)" in rest
    events_line = next(ln for ln in rest.splitlines() if "events " in ln)
    printed = int(events_line.split("events ")[1].replace(",", "").split()[0])
    with sqlite3.connect(db) as conn:
        session, status, ended = conn.execute("SELECT id, status, ended FROM sessions").fetchone()
    events = db_events(db, session)
    assert len(events) == printed
    assert events[-1].kind is EventKind.SESSION_ENDED
    assert events[-1].payload["reason"] == "interrupted"
    assert status == "clean" and ended is not None
    assert fold(events).budget.reserved_usd == pytest.approx(0, abs=1e-12)


# --- expected failures: one line, exit 2, no traceback --------------------------------


def assert_usage_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_missing_project_folder(tmp_path) -> None:
    proc = tower("run", str(tmp_path / "nope"), "--headless")
    assert_usage_error(proc, "nope", "no such project folder")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_folder_without_project_file(tmp_path) -> None:
    proc = tower("check", str(tmp_path))
    assert_usage_error(proc, "tower.toml", "missing project file")


def test_malformed_project_names_file_and_line(tmp_path) -> None:
    write_project(tmp_path, "[project\nname = 'x'\n")
    proc = tower("run", str(tmp_path), "--headless")
    assert_usage_error(proc, "tower.toml", "not valid TOML", "line 1")


def test_check_reports_each_problem_with_its_key(tmp_path) -> None:
    write_project(
        tmp_path,
        """
        [project]
        name = "x"
        [[agents]]
        name = "a"
        tools = ["read_file", "shell"]
        [[tasks]]
        id = "t"
        agent = "b"
        prompt = "p"
    """,
    )
    proc = tower("check", str(tmp_path))
    assert_usage_error(proc, "agents[0].tools[1]", "tasks[0].agent", "unknown agent 'b'")
    assert len(proc.stderr.strip().splitlines()) == 2


def test_check_ok_prints_one_line() -> None:
    proc = tower("check", "sample_projects/tax_return")
    assert proc.returncode == 0
    assert len(proc.stdout.strip().splitlines()) == 1 and "ok" in proc.stdout


MODEL_PROJECT = """
[project]
name = "real"
[[agents]]
name = "a"
cascade = ["{model}"]
[[tasks]]
id = "t"
agent = "a"
prompt = "p"
"""


def test_unknown_model(tmp_path) -> None:
    write_project(tmp_path, MODEL_PROJECT.format(model="no-such-model-xyz"))
    proc = tower("run", str(tmp_path), "--headless")
    assert_usage_error(proc, "agents[0].cascade[0]", "unknown model 'no-such-model-xyz'")


def test_missing_api_key_names_the_variable(tmp_path) -> None:
    write_project(tmp_path, MODEL_PROJECT.format(model="gpt-4o-mini"))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-m", "tower", "run", str(tmp_path), "--headless"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert_usage_error(proc, "OPENAI_API_KEY", "gpt-4o-mini")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unwritable_db(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = tower("run", "sample_projects/code_review", "--headless", "--db", str(blocker / "t.db"))
    assert_usage_error(proc, str(blocker / "t.db"))
    assert len(proc.stderr.strip().splitlines()) == 1


def test_db_that_is_a_folder(tmp_path) -> None:
    proc = tower("run", "sample_projects/code_review", "--headless", "--db", str(tmp_path))
    assert_usage_error(proc, str(tmp_path), "folder")


def test_db_that_is_not_sqlite(tmp_path) -> None:
    bad = tmp_path / "t.db"
    bad.write_bytes(b"this is not a database" * 100)
    proc = tower("sessions", "--db", str(bad))
    assert_usage_error(proc, str(bad))


def test_tui_without_headless_is_a_clear_usage_error() -> None:
    proc = tower("run", "sample_projects/tax_return")
    assert_usage_error(proc, "--headless")


def test_secrets_never_reach_the_log(tmp_path) -> None:
    secret = "sk-test-PLANTED-0123456789abcdef"
    root = write_project(
        tmp_path / "p",
        """
        [project]
        name = "leak"
        [[agents]]
        name = "a"
        cascade = ["sim/instant"]
        [[tasks]]
        id = "t"
        agent = "a"
        prompt = "p"
        workspace = "ws"
    """,
        {"ws/config.txt": f"api_key = {secret}\n"},
    )
    db = tmp_path / "t.db"
    proc = tower(
        "run", str(root), "--headless", "--json", "--db", str(db), env={"OPENAI_API_KEY": secret}
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    events = db_events(db, out["session"])
    reads = [
        e for e in events if e.kind is EventKind.TOOL_RESULT and e.payload["tool"] == "read_file"
    ]
    assert reads and "[redacted OPENAI_API_KEY]" in reads[0].payload["result"]
    for path in tmp_path.glob("t.db*"):
        assert secret.encode() not in path.read_bytes()
