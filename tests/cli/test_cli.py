"""The real CLI in subprocesses: sample projects headless (checked from the database), the
exact JSON forms, and every expected failure as one line with exit code 2."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    db_events,
    one_line_error,
    tower,
    tower_cmd,
    tower_env,
    write_project,
)
from tower.core.events import EventKind
from tower.core.state import fold, summary

SAMPLES = ["tax_return", "code_review", "market_analysis"]


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
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # exactly one JSON object on stdout
    out = json.loads(lines[0])
    # 0 only when every thread is done; market_analysis's budget stops fail threads: 1
    all_done = out["threads"]["failed"] == out["threads"]["killed"] == 0
    assert proc.returncode == (0 if all_done else 1), proc.stderr
    assert all_done is (name != "market_analysis")
    assert set(out) == {
        "session",
        "threads",
        "cost_usd",
        "budget_usd",
        "tokens",
        "estimated_tokens",
        "events",
        "human_minutes",
        "blocked_minutes",
        "lost_usd",
    } | ({"subtrees"} if name == "code_review" else set()) | (  # its lead has sub-agents
        {"saved_by_caching_usd"} if "saved_by_caching_usd" in out else set()
    )
    if name == "tax_return":  # its prompts pass 1,024 tokens: the sim's prompt cache reads
        assert out["saved_by_caching_usd"] > 0
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
    assert out["threads"] == {"done": 5, "failed": 0, "killed": 0}
    assert proc.returncode == 0
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
    assert proc.returncode == 1  # some threads failed (budget), even with --json
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
    # The lead reviewer's sub-agents are drawn as its tree, with the subtree's spending.
    tree = proc.stdout.split("sub-agents:\n", 1)[1].splitlines()
    assert tree[0].split()[:2] == ["lead-review", "done"] and "subtree $" in tree[0]
    assert "(5 threads)" in tree[0]
    assert [ln.split()[:2] for ln in tree[1:]] == [
        ["├─", "lead-review.1"],
        ["├─", "lead-review.2"],
        ["├─", "lead-review.3"],
        ["└─", "lead-review.4"],
    ]


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
    assert set(row) == {
        "id",
        "project",
        "started",
        "ended",
        "status",
        "threads",
        "cost_usd",
        "human_minutes",
        "blocked_minutes",
        "lost_usd",
    }
    assert row["lost_usd"] == 0  # nothing was cut off
    # Every decision was a rule's (--approve all): no person's time, nobody blocked on one.
    assert row["human_minutes"] == 0 and row["blocked_minutes"] == 0
    assert row["status"] == "clean" and row["project"] == "code_review"
    assert row["threads"] == sum(out["threads"].values())
    assert row["cost_usd"] == pytest.approx(out["cost_usd"])
    text = tower("sessions", "--db", str(db)).stdout
    assert out["session"] in text and "clean" in text


def test_interrupt_flushes_every_event_and_closes_cleanly(tmp_path) -> None:
    db = tmp_path / "t.db"
    proc = subprocess.Popen(
        tower_cmd("run", "sample_projects/market_analysis", "--headless", "--db", str(db)),
        env=tower_env(),
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


# --- exit codes and the headless lines ----------------------------------------------------

# "checked" fails its check on sim/small and escalates to sim/large, which passes: done.
# "broke" has a budget too small for any call: a budget stop, declined headless: failed.
TROUBLE_PROJECT = """
[project]
name = "trouble"
seed = 5
retry_backoff_s = 0

[models."sim/small"]
latency_s = 0
tokens_per_s = 0
wrong_rate = 1

[models."sim/large"]
latency_s = 0
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
cascade = ["sim/small", "sim/large"]
tools = ["read_file", "finish"]

[[tasks]]
id = "checked"
agent = "a"
prompt = "What is six times seven?"
workspace = "ws"

[tasks.check]
answer_contains = ["42"]

[[tasks.script]]
tool = "read_file"
args = { path = "note.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "six times seven is 42" }
wrong_args = { answer = "six times seven is 24" }

[[tasks]]
id = "broke"
agent = "a"
prompt = "Anything."
budget_usd = 0.000000001

[[tasks.script]]
tool = "finish"
args = { answer = "never" }
"""


def trouble_project(tmp_path: Path) -> Path:
    return write_project(tmp_path / "p", TROUBLE_PROJECT, {"ws/note.txt": "six times seven\n"})


def line_of(out: str, thread: str, text: str) -> str:
    """The one headless line of `thread` whose text starts with `text`, in the usual format:
    time, two spaces, the thread padded to 24, a space, the text."""
    lines = [ln for ln in out.splitlines() if f"  {thread:<24} {text}" in ln]
    assert len(lines) == 1, out
    assert lines[0][:8].replace(":", "").isdigit() and lines[0][8:10] == "  "
    return lines[0]


def test_headless_prints_escalations_failed_checks_and_budget_stops(tmp_path) -> None:
    db = tmp_path / "t.db"
    proc = tower("run", str(trouble_project(tmp_path)), "--headless", "--db", str(db))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)  # "broke" failed
    assert proc.stderr == ""
    out = proc.stdout
    check = line_of(out, "checked", "check failed on sim/small: ")
    esc = line_of(out, "checked", "escalated sim/small → sim/large (check failed: ")
    budget = line_of(out, "broke", "budget stop: thread budget: next call may cost $")
    assert "42" in check and esc.endswith(")")
    assert "left" in budget
    line_of(out, "checked", "done")
    line_of(out, "broke", "failed   budget")
    # The same lines, in the order of the log's events.
    with sqlite3.connect(db) as conn:
        (session,) = conn.execute("SELECT id FROM sessions").fetchone()
    events = db_events(db, session)
    [failed] = [e for e in events if e.kind is EventKind.CHECKED and not e.payload["passed"]]
    assert failed.payload["detail"] in check
    assert out.index(check) < out.index(esc)


def test_json_run_with_a_failed_thread_exits_1_and_fork_too(tmp_path) -> None:
    db = tmp_path / "t.db"
    proc = tower("run", str(trouble_project(tmp_path)), "--headless", "--json", "--db", str(db))
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stdout.strip().splitlines()  # still exactly one JSON object
    out = json.loads(line)
    assert out["threads"] == {"done": 1, "failed": 1, "killed": 0}
    spawned = [e.seq for e in db_events(db, out["session"]) if e.kind is EventKind.THREAD_SPAWNED]
    # A fork from before either thread ran ends the same way, with the same code.
    fork = tower("fork", out["session"], "--at", str(max(spawned)), "--json", "--db", str(db))
    assert fork.returncode == 1, fork.stderr
    assert json.loads(fork.stdout)["threads"] == {"done": 1, "failed": 1, "killed": 0}


@pytest.mark.parametrize(
    ("interrupted", "states", "code"),
    [
        (False, ["done", "done"], 0),
        (False, [], 0),
        (False, ["done", "failed"], 1),
        (False, ["done", "killed"], 1),
        (False, ["done", "paused"], 1),  # a thread that did not end is not done
        (True, ["done", "done"], 130),
        (True, ["failed"], 130),
    ],
)
def test_exit_code_rule(interrupted: bool, states: list[str], code: int) -> None:
    from types import SimpleNamespace

    from tower.cli import exit_code
    from tower.core.events import ThreadState

    threads = {f"t{i}": SimpleNamespace(state=ThreadState(s)) for i, s in enumerate(states)}
    result = SimpleNamespace(interrupted=interrupted, state=SimpleNamespace(threads=threads))
    assert exit_code(result) == code


# --- expected failures: one line, exit 2, no traceback --------------------------------


def test_missing_project_folder(tmp_path) -> None:
    proc = tower("run", str(tmp_path / "nope"), "--headless")
    one_line_error(proc, "nope", "no such project folder")


def test_folder_without_project_file(tmp_path) -> None:
    proc = tower("check", str(tmp_path))
    one_line_error(proc, "tower.toml", "missing project file")


def test_malformed_project_names_file_and_line(tmp_path) -> None:
    write_project(tmp_path, "[project\nname = 'x'\n")
    proc = tower("run", str(tmp_path), "--headless")
    one_line_error(proc, "tower.toml", "not valid TOML", "line 1")


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
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    tools, agent = proc.stderr.strip().splitlines()
    assert "agents[0].tools[1]" in tools
    assert "tasks[0].agent" in agent and "unknown agent 'b'" in agent


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
    one_line_error(proc, "agents[0].cascade[0]", "unknown model 'no-such-model-xyz'")


CASCADE_PROJECT = """
[project]
name = "real"
[[agents]]
name = "a"
cascade = {cascade}
[[tasks]]
id = "t"
agent = "a"
prompt = "p"
{models}
"""
FAKE_KEYS = {"OPENAI_API_KEY": "sk-fake-openai", "ANTHROPIC_API_KEY": "sk-ant-fake"}


def cascade_project(root: Path, cascade: list[str], models: str = "") -> Path:
    return write_project(root, CASCADE_PROJECT.format(cascade=json.dumps(cascade), models=models))


# No base URL from the environment: a model's address is the project's, or the default.
BASE_URLS = ("OPENAI_BASE_URL", "OPENAI_API_BASE", "HOSTED_VLLM_API_BASE")


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_misspelt_model_fails_with_did_you_mean_even_with_its_key_set(
    tmp_path, command: str
) -> None:
    root = cascade_project(tmp_path / "p", ["sim/small", "claude-sonet-4"])
    args = [command, str(root)]
    if command == "run":
        args += ["--headless", "--db", str(tmp_path / "t.db")]
    line = one_line_error(tower(*args, env=FAKE_KEYS, unset=BASE_URLS))
    prefix = (
        f"{root / 'tower.toml'}: agents[0].cascade[1]: unknown model 'claude-sonet-4' "
        "(did you mean 'claude-sonnet-4-"
    )
    assert line.startswith(prefix) and line.endswith("'?)"), line
    assert not (tmp_path / "t.db").exists()  # nothing ran


def test_a_misspelt_prefixed_model_is_suggested_with_its_prefix(tmp_path) -> None:
    root = cascade_project(tmp_path / "p", ["openai/gpt-4o-mni"])
    proc = tower("check", str(root), env=FAKE_KEYS, unset=BASE_URLS)
    one_line_error(
        proc,
        "agents[0].cascade[0]: unknown model 'openai/gpt-4o-mni' "
        "(did you mean 'openai/gpt-4o-mini'?)",
    )


def test_names_litellm_knows_pass_with_or_without_their_prefix(tmp_path) -> None:
    cascade = ["sim/small", "gpt-4o-mini", "openai/gpt-4o-mini", "claude-haiku-4-5"]
    cascade.append("anthropic/claude-haiku-4-5")
    root = cascade_project(tmp_path / "p", cascade)
    proc = tower("check", str(root), env=FAKE_KEYS, unset=BASE_URLS)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "anthropic/claude-haiku-4-5" in proc.stdout


def test_local_servers_and_open_providers_may_serve_any_name(tmp_path) -> None:
    models = """
[models."openai/my-local-model"]
api_base = "http://127.0.0.1:8000/v1"
[models."hosted_vllm/Qwen/Qwen2.5-7B-Instruct"]
api_base = "http://127.0.0.1:8001/v1"
"""
    cascade = ["ollama/qwen2.5-coder:7b", "openai/my-local-model"]
    cascade.append("hosted_vllm/Qwen/Qwen2.5-7B-Instruct")
    root = cascade_project(tmp_path / "p", cascade, models)
    proc = tower("check", str(root), unset=[*BASE_URLS, "OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
    assert proc.returncode == 0, proc.stderr
    # Without its api_base, the same openai/ name is unknown to litellm: a typo, most likely.
    bare = cascade_project(tmp_path / "q", ["openai/my-local-model"])
    proc = tower("check", str(bare), env=FAKE_KEYS, unset=BASE_URLS)
    one_line_error(proc, "unknown model 'openai/my-local-model'", "api_base")
    # hosted_vllm has no default address: without one litellm would call api.openai.com.
    vllm = cascade_project(tmp_path / "r", ["hosted_vllm/my-model"])
    proc = tower("check", str(vllm), unset=BASE_URLS)
    one_line_error(proc, "'hosted_vllm/my-model' needs", "HOSTED_VLLM_API_BASE")
    proc = tower(
        "check", str(vllm), env={"HOSTED_VLLM_API_BASE": "http://h:1/v1"}, unset=BASE_URLS[:2]
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_api_key_names_the_variable(tmp_path) -> None:
    write_project(tmp_path, MODEL_PROJECT.format(model="gpt-4o-mini"))
    proc = tower("run", str(tmp_path), "--headless", unset=["OPENAI_API_KEY"])
    one_line_error(proc, "OPENAI_API_KEY", "gpt-4o-mini")


def test_unwritable_db(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = tower("run", "sample_projects/code_review", "--headless", "--db", str(blocker / "t.db"))
    one_line_error(proc, str(blocker / "t.db"))


def test_db_that_is_a_folder(tmp_path) -> None:
    proc = tower("run", "sample_projects/code_review", "--headless", "--db", str(tmp_path))
    one_line_error(proc, str(tmp_path), "folder")


def test_db_that_is_not_sqlite(tmp_path) -> None:
    bad = tmp_path / "t.db"
    bad.write_bytes(b"this is not a database" * 100)
    proc = tower("sessions", "--db", str(bad))
    one_line_error(proc, str(bad))


def test_tui_without_headless_is_a_clear_usage_error() -> None:
    proc = tower("run", "sample_projects/tax_return")
    one_line_error(proc, "--headless")


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


def test_the_tests_keep_tower_out_of_the_users_own_folders() -> None:
    """The CLI with no --db writes its database, workspaces and tower.log under the XDG
    folders conftest sets for the test run, never under the real home."""
    from tests.conftest import TEST_HOME

    real = Path.home() / ".local" / "state" / "tower" / "log" / "tower.log"
    before = real.stat().st_mtime_ns if real.exists() else None
    proc = tower("run", "sample_projects/tax_return", "--headless", "--approve", "all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert (TEST_HOME / "xdg_data_home" / "tower" / "tower.db").is_file()
    assert (TEST_HOME / "xdg_state_home" / "tower" / "log" / "tower.log").is_file()
    assert (real.stat().st_mtime_ns if real.exists() else None) == before
