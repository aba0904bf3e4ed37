"""Secrets against a hostile pass (issue 11, point 8).

A key in the variable a model's `api_key_env` names is a secret whatever that name looks like;
a model that repeats the key, streamed in pieces split at every point, leaves no fragment of
it longer than FRAGMENT_OK characters in the event log's bytes, the decompressed snapshots,
either export, `replay --print-state --json`, tower.log, or what the model is sent back; and
`run_shell` cannot read tower's environment through /proc/$PPID/environ (bubblewrap's own PID
namespace where it works, the initial environment block blanked where it does not).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.fake_openai import FakeOpenAI, Reply, tool_reply
from tests.helpers import pids_running, write_project
from tower.core import agent
from tower.core import bus as bus_mod
from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import EventKind
from tower.core.project import load_project
from tower.core.replay import export_csv, export_jsonl, print_state, state_at
from tower.core.secrets import (
    FRAGMENT_OK,
    is_secret_name,
    safe_stream_cut,
    secrets_for_project,
)
from tower.core.session import run_headless
from tower.core.store import Store
from tower.core.tools import shell
from tower.core.tools.shell import run_shell

# A name nothing would take for a secret, and a key whose 4-grams occur nowhere else.
VAR = "MYLLM_SERVER_ACCESS"
KEY = "ZQ8XJ2VQ7ZK9XW3QJ5ZV8KQX4JZ7WQ2XV9KJ3ZQ"
MODEL = "openai/gpt-4o-mini"


def fragments(secret: str = KEY, longer_than: int = FRAGMENT_OK) -> list[str]:
    n = longer_than + 1
    return sorted({secret[i : i + n] for i in range(len(secret) - n + 1)})


def leaks(blob: str | bytes, secret: str = KEY) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [f for f in fragments(secret) if f.encode() in data]


def test_the_name_is_innocuous_until_a_project_names_it() -> None:
    assert not is_secret_name("MYLLM_OTHER_ACCESS")
    project = type("P", (), {"models": {"m": type("M", (), {"api_key_env": "MYLLM_OTHER_ACCESS"})}})
    got = secrets_for_project(project, {"MYLLM_OTHER_ACCESS": "value-of-eight", "PATH": "/bin"})
    assert got == {"value-of-eight": "MYLLM_OTHER_ACCESS"}
    assert is_secret_name("MYLLM_OTHER_ACCESS")


# --- the bus, a key split at every point --------------------------------------------------


def _split_everywhere() -> list[list[str]]:
    text = f"Your key is {KEY} and again:{KEY}."
    at = text.index(KEY)
    cases = [[text[: at + k], text[at + k :]] for k in range(1, len(KEY))]
    cases.append(list(text))  # one character a delta
    cases.append([text[i : i + 3] for i in range(0, len(text), 3)])
    return cases


@pytest.mark.parametrize("pieces", _split_everywhere(), ids=lambda p: f"{len(p)}x{len(p[0])}")
def test_bus_redacts_a_key_split_across_deltas(pieces: list[str]) -> None:
    bus = Bus(None, secrets={KEY: VAR})
    seen: list[Any] = []
    bus.subscribe(seen.append)
    bus.emit(pl.LlmStarted(call="c1", step=1, model="m", reserved_usd=0.0))
    for piece in pieces:
        bus.emit(pl.LlmDelta(call="c1", text=piece))
    text = "".join(pieces)
    usage = pl.Usage(total_tokens=0)
    bus.emit(
        pl.LlmFinished(
            call="c1", step=1, model="m", text=text, cost_usd=0.0, usage=usage, reserved_usd=0.0
        )
    )
    deltas = "".join(e.payload["text"] for e in seen if e.kind is EventKind.LLM_DELTA)
    assert deltas == f"Your key is [redacted {VAR}] and again:[redacted {VAR}]."
    for ev in seen:
        assert leaks(json.dumps(ev.payload)) == [], ev


def test_the_overlap_is_short_and_a_cut_off_key_is_redacted() -> None:
    secrets = {KEY: VAR}
    assert safe_stream_cut("plain words here.", secrets) == len("plain words here.")
    text = "see " + KEY[:10]
    assert safe_stream_cut(text, secrets) == 4  # only the possible key start is held
    bus = Bus(None, secrets=secrets)
    seen: list[Any] = []
    bus.subscribe(seen.append)
    bus.emit(pl.LlmDelta(call="c", text=text))
    bus.emit(pl.LlmFailed(call="c", error="cut", released_usd=0.0))
    got = "".join(e.payload.get("text", "") for e in seen if e.kind is EventKind.LLM_DELTA)
    assert got == f"see [redacted {VAR}]"


# --- the whole path: fake OpenAI server, headless session, every place a key could land -----


def _project(tmp_path: Path, server: FakeOpenAI) -> Path:
    root = write_project(
        tmp_path / "proj",
        f"""
        [project]
        name = "hostile"
        retry_backoff_s = 0
        max_retries = 0
        call_timeout_s = 30

        [policy]
        allow = ["run_shell"]

        [[agents]]
        name = "a"
        cascade = ["{MODEL}"]
        tools = ["run_shell", "finish"]
        max_tokens = 256

        [[tasks]]
        id = "t"
        agent = "a"
        prompt = "Say the key."
        workspace = "ws"

        [models."{MODEL}"]
        api_base = "{server.base_url}"
        api_key_env = "{VAR}"
        """,
    )
    (root / "ws").mkdir()  # an empty workspace
    return root


@pytest.mark.parametrize("chunk", [1, 3, 7])
async def test_a_streamed_key_reaches_no_log_export_snapshot_state_or_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setenv(VAR, KEY)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(bus_mod, "SNAPSHOT_EVERY", 1)
    monkeypatch.setattr(agent, "DELTA_INTERVAL_S", 0.0)  # every chunk its own delta event
    log_file = tmp_path / "tower.log"
    handler = logging.FileHandler(log_file, encoding="utf-8")
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        async with FakeOpenAI() as server:
            shell_cmd = "cat /proc/$PPID/environ; echo; env; cat /proc/1/environ"
            first: Reply = tool_reply(
                "run_shell",
                {"command": shell_cmd},
                "call_sh",
                text=f"Your key is {KEY}; again {KEY}",
                chunk_chars=chunk,
            )
            server.script(first, tool_reply("finish", {"answer": f"it is {KEY}"}, "call_fin"))
            project = load_project(_project(tmp_path, server))
            db = tmp_path / "tower.db"
            result = await run_headless(project, db, "all", session_id="hostile")
            logging.getLogger("tower.test").warning("a line quoting the key: %s", KEY)
            assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
            sent_back = [m for r in server.requests for m in r.messages if m["role"] == "tool"]
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(old_level)

    assert result.state.threads["t"].state.ended
    assert sent_back and "exit status" in sent_back[0]["content"]
    for message in sent_back:  # what run_shell's output told the model
        assert leaks(json.dumps(message)) == [], message

    store = await Store.open(db)
    try:
        jsonl, csv_out = io.StringIO(), io.StringIO()
        assert await export_jsonl(store, "hostile", jsonl) > 0
        await export_csv(store, "hostile", csv_out)
        state = json.dumps(print_state(await state_at(store, "hostile"), None))
    finally:
        await store.close()
    assert f"[redacted {VAR}]" in jsonl.getvalue()
    deltas = [
        json.loads(line)
        for line in jsonl.getvalue().splitlines()
        if json.loads(line)["kind"] == EventKind.LLM_DELTA.value
    ]
    assert len(deltas) > 10  # the key really came in pieces
    assert leaks(jsonl.getvalue()) == []
    assert leaks(csv_out.getvalue()) == []
    assert leaks(state) == []
    assert leaks(log_file.read_bytes()) == []

    raw = b"".join(p.read_bytes() for p in tmp_path.glob("tower.db*"))
    assert leaks(raw) == []
    conn = sqlite3.connect(db)
    try:
        snaps = [zlib.decompress(blob) for (blob,) in conn.execute("SELECT state FROM snapshots")]
        payloads = [p for (p,) in conn.execute("SELECT payload FROM events")]
    finally:
        conn.close()
    assert snaps, "no snapshot was written"
    assert all(leaks(s) == [] for s in snaps)
    assert any(f"[redacted {VAR}]".encode() in s for s in snaps)
    assert all(leaks(p if isinstance(p, bytes | str) else str(p)) == [] for p in payloads)


# --- run_shell and tower's environment ------------------------------------------------------


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    return root.resolve()


async def test_env_and_parent_environ_hold_no_secret(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VAR, KEY)
    secrets_for_project(type("P", (), {"models": {"m": type("M", (), {"api_key_env": VAR})}}))
    out = await run_shell(
        "env; tr '\\000' '\\n' < /proc/$PPID/environ;"
        " (tr '\\000' '\\n' < /proc/1/environ) 2>/dev/null; true",
        cwd,
        timeout_s=20,
        max_output_bytes=1_000_000,
    )
    assert out.startswith("exit status 0"), out
    assert "PATH=" in out
    assert leaks(out) == [] and f"{VAR}=" not in out


def test_without_the_sandbox_tower_s_initial_environment_is_blanked(tmp_path: Path) -> None:
    # A real process whose first environment holds the key, as tower's does when started.
    script = textwrap.dedent(
        f"""
        import asyncio, hashlib, os, pathlib, sys
        from tower.core.secrets import secrets_for_project
        from tower.core.tools import shell
        shell.USE_SANDBOX = False
        P = type("P", (), {{"models": {{"m": type("M", (), {{"api_key_env": "{VAR}"}})}}}})
        secrets_for_project(P)
        cmd = "tr '\\\\000' '\\\\n' < /proc/$PPID/environ; echo; cat /proc/$PPID/cmdline"
        out = asyncio.run(shell.run_shell(cmd, pathlib.Path(sys.argv[1]), timeout_s=20,
                                          max_output_bytes=1_000_000))
        print(out)
        digest = hashlib.sha256(os.environ["{VAR}"].encode()).hexdigest()
        print("STILL-HERE", digest == "{hashlib.sha256(KEY.encode()).hexdigest()}")
        """
    )
    env = {**os.environ, VAR: KEY}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "exit status 0" in done.stdout and "python" in done.stdout  # it read tower's files
    assert f"{VAR}=" in done.stdout  # the variable is there, its value blanked
    assert leaks(done.stdout) == []
    assert "STILL-HERE True" in done.stdout  # litellm still finds the key in os.environ


needs_bwrap = pytest.mark.skipif(not shell.sandboxed(), reason="bubblewrap not usable here")


@needs_bwrap
async def test_in_the_sandbox_pid_1_is_not_tower_and_the_rest_is_read_only(cwd: Path) -> None:
    out = await run_shell(
        "echo $PPID; tr '\\000' ' ' < /proc/1/cmdline; echo; ls /proc | grep -c '^[0-9]';"
        " touch made-here && echo wrote; touch /usr/tower-escape 2>&1 || true",
        cwd,
        timeout_s=20,
        max_output_bytes=100_000,
    )
    lines = out.splitlines()
    assert lines[0].startswith("exit status 0"), out
    assert lines[1] == "1"
    assert "bwrap" in lines[2] and "python" not in lines[2].split()[0]
    assert int(lines[3]) < 10  # only the sandbox's own processes are visible
    assert "wrote" in out and (cwd / "made-here").exists()
    assert not Path("/usr/tower-escape").exists()
    assert str(os.getpid()) not in lines[3:4]


@needs_bwrap
async def test_in_the_sandbox_a_timeout_still_kills_everything_it_started(cwd: Path) -> None:
    marker = "600.4242"
    out = await run_shell(
        f"sleep {marker} & setsid sleep {marker} & echo started; wait",
        cwd,
        timeout_s=1,
        max_output_bytes=10_000,
    )
    assert out.startswith("timed out after 1 s"), out
    assert await _none_left(marker) == []


@needs_bwrap
async def test_in_the_sandbox_there_is_no_network(cwd: Path) -> None:
    # A server on tower's loopback: reachable from tower, not from the command.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        out = await run_shell(
            'python -c "import socket; s=socket.socket(); s.settimeout(2); '
            f"print('connect', s.connect_ex(('127.0.0.1', {port})))\"; "
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ' '",
            cwd,
            timeout_s=20,
            max_output_bytes=10_000,
        )
    finally:
        server.close()
        await server.wait_closed()
    assert out.startswith("exit status 0"), out
    assert "connect 0" not in out and "connect " in out
    assert out.splitlines()[2].split() == ["lo"]  # no interface but its own loopback


async def _none_left(marker: str) -> list[int]:
    for _ in range(100):
        if not pids_running(marker):
            break
        await asyncio.sleep(0.05)
    return pids_running(marker)


@needs_bwrap
async def test_in_the_sandbox_a_background_child_does_not_outlive_the_command(cwd: Path) -> None:
    marker = "600.4343"
    out = await run_shell(
        f"sleep {marker} & echo started", cwd, timeout_s=10, max_output_bytes=1000
    )
    assert out.startswith("exit status 0 "), out
    assert await _none_left(marker) == []


@needs_bwrap
async def test_in_the_sandbox_cancelling_the_call_kills_everything(cwd: Path) -> None:
    marker = "600.4444"
    task = asyncio.create_task(
        run_shell(f"sleep {marker} & wait", cwd, timeout_s=60, max_output_bytes=1000)
    )
    for _ in range(200):  # until the sleep is running
        if pids_running(marker):
            break
        await asyncio.sleep(0.05)
    assert pids_running(marker), "the command never started"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _none_left(marker) == []


def test_a_reloaded_project_adds_its_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYLLM_RELOADED_ACCESS", "reloaded-value-123")
    bus = Bus(None, secrets={})
    model = type("M", (), {"api_key_env": "MYLLM_RELOADED_ACCESS"})
    bus.add_secrets_of(type("P", (), {"models": {"m": model}}))
    ev = bus.emit(pl.Comment(text="it was reloaded-value-123"))
    assert ev.payload["text"] == "it was [redacted MYLLM_RELOADED_ACCESS]"
