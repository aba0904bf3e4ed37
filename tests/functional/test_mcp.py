"""MCP servers over stdio: tool listing, calls through real threads (policy, approvals, error
results), the reference time and git servers, crashes and restarts, call timeouts, stderr
kept off the terminal, start failures, no stray processes, and no secrets in a server's
environment. Every test starts real server processes and waits on bus events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Live, ended
from tests.helpers import write_project
from tower.core import mcp as mcp_module
from tower.core.bus import Bus
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.mcp import McpHub, McpStartError, command_problems
from tower.core.project import load_project, parse_project
from tower.core.store import Store
from tower.core.supervisor import Supervisor
from tower.core.tools.files import ToolError

BIN = Path(sys.executable).parent
TIME_SERVER = str(BIN / "mcp-server-time")
GIT_SERVER = str(BIN / "mcp-server-git")

# A server of our own: prints its arguments to stderr at startup (or exits at once when a
# `broken-<name>` file lies beside it), `touch` leaves a file behind, `hang` writes a marker
# file then never answers, `big` answers with a long text.
PROBE_SERVER = '''
import sys
from pathlib import Path

if Path(__file__).with_name("broken-" + sys.argv[1]).exists():
    print("BROKEN: refusing to start", file=sys.stderr, flush=True)
    sys.exit(3)

import anyio
from mcp.server.mcpserver import MCPServer

print("PROBE-STDERR-" + " ".join(sys.argv[1:]), file=sys.stderr, flush=True)
server = MCPServer("probe")


@server.tool()
def touch(path: str) -> str:
    """Creates a file."""
    Path(path).write_text("touched", encoding="utf-8")
    return "touched " + path


@server.tool()
async def hang(marker: str) -> str:
    """Writes a marker file, then never answers."""
    Path(marker).write_text("in flight", encoding="utf-8")
    await anyio.sleep(3600)
    return "never"


@server.tool()
def big(size: int) -> str:
    """Answers with a long text."""
    return "x" * size


server.run()
'''

StartLive = Callable[..., Any]


@pytest.fixture(autouse=True)
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test sends server stderr to its own folder."""
    folder = tmp_path / "logs"
    monkeypatch.setenv("TOWER_LOG_DIR", str(folder))
    return folder


@dataclass
class Bare:
    """A supervisor that has not been started, and every event its bus sends."""

    sup: Supervisor
    events: list[Event] = field(default_factory=list)


StartBare = Callable[[str], Awaitable[Bare]]


@pytest.fixture
async def bare_factory(tmp_path: Path) -> AsyncIterator[StartBare]:
    """Like live_factory without the start, so a test can catch a failed start itself."""
    made: list[tuple[Supervisor, Store]] = []

    async def make(toml: str) -> Bare:
        root = write_project(tmp_path / f"bare{len(made)}", toml)
        store = await Store.open(tmp_path / f"bare{len(made)}.db")
        bus = Bus(store, secrets={})
        bare = Bare(Supervisor(load_project(root), bus, workspaces_dir=tmp_path / "ws"))
        bus.subscribe(bare.events.append)
        made.append((bare.sup, store))
        return bare

    yield make
    for sup, store in made:
        try:
            await sup.close()
        finally:
            await store.close()


def q(text: str) -> str:
    """A TOML string (JSON's escapes are valid TOML)."""
    return json.dumps(text)


def server_toml(name: str, command: str, args: list[str] | None = None, extra: str = "") -> str:
    return (
        f"\n[[mcp_servers]]\nname = {q(name)}\ncommand = {q(command)}\n"
        f"args = [{', '.join(q(a) for a in args or [])}]\n{extra}\n"
    )


def time_server(extra: str = "") -> str:
    return server_toml("time", TIME_SERVER, extra=extra)


def probe_server(
    tmp_path: Path, name: str = "probe", extra: str = "", args: list[str] | None = None
) -> str:
    script = tmp_path / "probe_server.py"
    script.write_text(PROBE_SERVER, encoding="utf-8")
    return server_toml(name, "{python}", [str(script), name, *(args or [])], extra)


def project(servers: str, mcp: list[str], tasks: str = "", allow: list[str] | None = None) -> str:
    policy = f"[policy]\nallow = [{', '.join(q(a) for a in allow)}]\n" if allow else ""
    return f"""
[project]
name = "mcp"
retry_backoff_s = 0

{policy}
[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["finish"]
mcp = [{", ".join(q(m) for m in mcp)}]
max_steps = 10
{servers}
{tasks}
"""


def task(tid: str, *steps: tuple[str, dict[str, Any]]) -> str:
    """A task whose script calls each (tool, args) in turn, then finishes."""
    out = f'\n[[tasks]]\nid = "{tid}"\nagent = "a"\nprompt = "use the tools"\n'
    for tool, args in steps:
        inline = ", ".join(f"{k} = {q(v)}" for k, v in args.items())
        out += f'\n[[tasks.script]]\nsay = "Calling {tool}."\ntool = "{tool}"\n'
        out += f"args = {{ {inline} }}\n"
    out += '\n[[tasks.script]]\ntool = "finish"\nargs = { answer = "all done" }\n'
    return out


def hub(sup: Supervisor) -> McpHub:
    assert sup.mcp is not None, "the project's MCP servers were not started"
    return sup.mcp


def results(live: Live, tid: str, tool: str) -> list[dict[str, Any]]:
    return [e.payload for e in live.kinds(tid, EventKind.TOOL_RESULT) if e.payload["tool"] == tool]


def mcp_events(live: Live, server: str) -> list[dict[str, Any]]:
    return [
        e.payload
        for e in live.events
        if e.kind is EventKind.MCP_SERVER and e.payload["server"] == server
    ]


def gone(pid: int) -> bool:
    """True when no process has this pid any more (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


async def until_file(path: Path, timeout: float = 15.0) -> None:
    """Waits, with short awaits, until a file a server writes exists (bounded)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        await asyncio.sleep(0.01)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [entry.decode().partition("=") for entry in raw.split(b"\0") if entry]
    return {k: v for k, _, v in pairs}


# --- listing tools ----------------------------------------------------------------------


async def test_tools_listed_with_prefix_and_schema(live_factory: StartLive) -> None:
    live: Live = await live_factory(project(time_server(), ["time"]))
    names = hub(live.sup).names(["time"])
    assert "time__get_current_time" in names and "time__convert_time" in names
    ready = [p for p in mcp_events(live, "time") if p["status"] == "ready"]
    assert len(ready) == 1
    assert {"time__get_current_time", "time__convert_time"} <= set(ready[0]["tools"])
    assert live.bus.state.mcp["time"]["status"] == "ready"
    agent = live.project.agent("a")
    schemas = {s["function"]["name"]: s["function"] for s in live.sup.tools_for(agent)}
    assert "finish" in schemas  # built-ins are still offered
    current = schemas["time__get_current_time"]
    params = current["parameters"]
    assert params["type"] == "object"
    assert "timezone" in params["properties"] and "timezone" in params.get("required", [])
    assert current["description"].endswith("(MCP server time)")
    server = hub(live.sup).servers["time"]
    assert server.pid is not None and not gone(server.pid)
    assert live.sup.has_tool(agent, "time__get_current_time")
    assert not live.sup.has_tool(agent, "time__no_such_tool")


async def test_agent_without_the_server_is_not_offered_its_tools(
    live_factory: StartLive,
) -> None:
    toml = project(time_server(), ["time"]) + (
        '\n[[agents]]\nname = "plain"\ncascade = ["sim/instant"]\ntools = ["finish"]\n'
    )
    live: Live = await live_factory(toml)
    plain = live.project.agent("plain")
    names = [s["function"]["name"] for s in live.sup.tools_for(plain)]
    assert names == ["finish"]
    assert not live.sup.has_tool(plain, "time__get_current_time")


# --- calls through threads --------------------------------------------------------------


async def test_allowed_call_runs_and_records_the_rule(live_factory: StartLive) -> None:
    tasks = task("t", ("time__get_current_time", {"timezone": "Europe/Paris"}))
    live: Live = await live_factory(project(time_server(), ["time"], tasks, allow=["time__*"]))
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    assert live.view("t").answer == "all done"
    called = [
        e.payload
        for e in live.kinds("t", EventKind.TOOL_CALLED)
        if e.payload["tool"] == "time__get_current_time"
    ]
    assert len(called) == 1
    assert called[0]["policy"] == "allow"
    assert "time__*" in called[0]["rule"] and "policy.allow[0]" in called[0]["rule"]
    assert called[0]["args"] == {"timezone": "Europe/Paris"}
    [res] = results(live, "t", "time__get_current_time")
    assert res["ok"] is True
    assert "Europe/Paris" in res["result"]
    assert not live.bus.state.inbox  # nothing waited for a human


async def test_error_result_goes_back_and_thread_finishes(live_factory: StartLive) -> None:
    tasks = task(
        "t",
        ("time__get_current_time", {"timezone": "Mars/Olympus_Mons"}),
        ("time__get_current_time", {"timezone": "Asia/Tokyo"}),
    )
    live: Live = await live_factory(project(time_server(), ["time"], tasks, allow=["time__*"]))
    await live.waiter.until(ended(live, "t"))
    bad, good = results(live, "t", "time__get_current_time")
    assert bad["ok"] is False
    assert "Invalid timezone" in bad["result"] and "Mars/Olympus_Mons" in bad["result"]
    assert good["ok"] is True and "Asia/Tokyo" in good["result"]
    assert live.view("t").state is ThreadState.DONE and live.view("t").answer == "all done"
    # the server kept running: no crash was reported
    assert [p["status"] for p in mcp_events(live, "time")] == ["ready"]


async def test_unknown_tool_or_server_is_a_tool_error(live_factory: StartLive) -> None:
    """What a model that invents a name gets (sim models only call tools they are offered)."""
    live: Live = await live_factory(project(time_server(), ["time"]), spawn_tasks=False)
    servers = hub(live.sup)
    with pytest.raises(ToolError, match="no MCP server named 'nope'"):
        await servers.call("nope__get_current_time", {})
    with pytest.raises(ToolError, match=r"MCP server 'time'.*no_such_tool"):
        await servers.call("time__no_such_tool", {})
    assert not servers.has("time__no_such_tool") and servers.has("time__convert_time")
    # the server is still up and answering
    text = await servers.call("time__get_current_time", {"timezone": "UTC"})
    assert "UTC" in text


async def test_default_policy_asks_and_approval_runs_the_call(
    live_factory: StartLive, tmp_path: Path
) -> None:
    target = tmp_path / "touched.txt"
    tasks = task("t", ("probe__touch", {"path": str(target)}))
    live: Live = await live_factory(project(probe_server(tmp_path), ["probe"], tasks))
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    item = live.item_of("t")
    entry = live.bus.state.inbox[item]
    assert entry.kind is InboxKind.APPROVAL
    assert entry.data["tool"] == "probe__touch"
    assert entry.data["args"] == {"path": str(target)}
    assert live.view("t").state is ThreadState.WAITING
    [called] = live.kinds("t", EventKind.TOOL_CALLED)
    assert called.payload["policy"] == "ask"
    assert not target.exists()  # nothing ran before the approval
    live.sup.approve(item)
    await live.waiter.until(ended(live, "t"))
    [res] = results(live, "t", "probe__touch")
    assert res["ok"] is True and res["result"] == f"touched {target}"
    assert target.read_text() == "touched"
    assert live.view("t").state is ThreadState.DONE


async def test_headless_deny_never_calls_the_server(
    live_factory: StartLive, tmp_path: Path
) -> None:
    target = tmp_path / "touched.txt"
    tasks = task("t", ("probe__touch", {"path": str(target)}))
    live: Live = await live_factory(
        project(probe_server(tmp_path), ["probe"], tasks), approve="none"
    )
    await live.waiter.until(ended(live, "t"))
    [opened] = live.kinds("t", EventKind.INBOX_OPENED)
    assert opened.payload["tool"] == "probe__touch"
    [closed] = live.kinds("t", EventKind.INBOX_CLOSED)
    assert closed.payload["resolution"] == "denied"
    [res] = results(live, "t", "probe__touch")
    assert res["ok"] is False and "denied" in res["result"]
    assert not target.exists()
    assert live.view("t").state is ThreadState.DONE


# --- the git server ---------------------------------------------------------------------


def make_repo(path: Path, message: str) -> Path:
    path.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.com",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    (path / "readme.txt").write_text("hello\n", encoding="utf-8")

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)

    git("init", "-q")
    git("add", "readme.txt")
    git("commit", "-q", "-m", message)
    (path / "untracked.txt").write_text("new\n", encoding="utf-8")
    return path


async def test_git_server_status_log_and_confinement(
    live_factory: StartLive, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", "Initial import of the widget")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    servers = server_toml("git", GIT_SERVER, ["--repository", str(repo)])
    tasks = task(
        "g",
        ("git__git_status", {"repo_path": str(repo)}),
        ("git__git_log", {"repo_path": str(repo)}),
        ("git__git_status", {"repo_path": str(outside)}),
    )
    live: Live = await live_factory(project(servers, ["git"], tasks, allow=["git__*"]))
    assert {"git__git_status", "git__git_log"} <= set(hub(live.sup).names(["git"]))
    await live.waiter.until(ended(live, "g"))
    status, confined = results(live, "g", "git__git_status")
    [log] = results(live, "g", "git__git_log")
    assert status["ok"] is True and "untracked.txt" in status["result"]
    assert log["ok"] is True and "Initial import of the widget" in log["result"]
    assert confined["ok"] is False
    assert "outside" in confined["result"] and str(outside) in confined["result"]
    assert live.view("g").state is ThreadState.DONE


# --- crashes, restarts, timeouts --------------------------------------------------------


async def test_killed_idle_server_restarts_and_serves_again(live_factory: StartLive) -> None:
    live: Live = await live_factory(
        project(time_server(), ["time"], allow=["time__*"]), spawn_tasks=False
    )
    server = hub(live.sup).servers["time"]
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await live.waiter.until(lambda: live.bus.state.mcp["time"]["restarts"] >= 1)
    statuses = [p["status"] for p in mcp_events(live, "time")]
    assert statuses == ["ready", "crashed", "restarted"]
    crashed = mcp_events(live, "time")[1]
    assert "exited" in crashed["detail"]
    assert {"time__get_current_time"} <= set(mcp_events(live, "time")[2]["tools"])
    assert server.pid is not None and server.pid != first
    assert gone(first) and not gone(server.pid)
    tid = live.sup.spawn(
        "a",
        "what time is it",
        task_id="after",
        script=[
            {"tool": "time__get_current_time", "args": {"timezone": "America/New_York"}},
            {"tool": "finish", "args": {"answer": "ok"}},
        ],
    )
    await live.waiter.until(ended(live, tid))
    [res] = results(live, tid, "time__get_current_time")
    assert res["ok"] is True and "America/New_York" in res["result"]


async def test_call_in_flight_when_server_dies_gets_error_result(
    live_factory: StartLive, tmp_path: Path
) -> None:
    marker = tmp_path / "in-flight"
    tasks = task("t", ("probe__hang", {"marker": str(marker)}))
    live: Live = await live_factory(
        project(probe_server(tmp_path), ["probe"], tasks, allow=["probe__*"])
    )
    server = hub(live.sup).servers["probe"]
    first = server.pid
    assert first is not None
    await until_file(marker)
    assert not results(live, "t", "probe__hang")  # the call really is in flight
    os.kill(first, signal.SIGKILL)
    await live.waiter.until(ended(live, "t"))
    [res] = results(live, "t", "probe__hang")
    assert res["ok"] is False
    assert "stopped during the call" in res["result"]
    assert live.view("t").state is ThreadState.DONE  # the thread went on to finish
    await live.waiter.until(lambda: live.bus.state.mcp["probe"]["restarts"] >= 1)
    assert server.pid is not None and server.pid != first
    crashed = [p for p in mcp_events(live, "probe") if p["status"] == "crashed"]
    assert len(crashed) == 1 and str(server.log_path) in crashed[0]["detail"]
    # both runs wrote to the same log file: the restart appends
    assert server.log_path.read_text(encoding="utf-8").count("PROBE-STDERR-probe") == 2


async def test_call_timeout_gives_error_result(live_factory: StartLive, tmp_path: Path) -> None:
    marker, after = tmp_path / "in-flight", tmp_path / "after.txt"
    tasks = task(
        "t", ("probe__hang", {"marker": str(marker)}), ("probe__touch", {"path": str(after)})
    )
    # `hang` never answers, so the call timeout ends it: short, yet far more than `touch`, on
    # the same server, takes to answer on a slow machine.
    servers = probe_server(tmp_path, extra="call_timeout_s = 2")
    live: Live = await live_factory(project(servers, ["probe"], tasks, allow=["probe__*"]))
    await live.waiter.until(ended(live, "t"))
    await until_file(marker)  # the server did receive the call
    [res] = results(live, "t", "probe__hang")
    assert res["ok"] is False
    assert "did not answer hang within 2 s" in res["result"]
    [touched] = results(live, "t", "probe__touch")  # the next call is served as usual
    assert touched["ok"] is True and after.read_text() == "touched"
    assert live.view("t").state is ThreadState.DONE
    # a slow tool is not a crash: the server is still the one that started
    assert [p["status"] for p in mcp_events(live, "probe")] == ["ready"]


async def test_server_that_keeps_crashing_is_given_up(
    live_factory: StartLive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcp_module, "MAX_CRASHES", 3)  # give up sooner than in real use
    live: Live = await live_factory(
        project(probe_server(tmp_path), ["probe"], allow=["probe__*"]), spawn_tasks=False
    )
    server = hub(live.sup).servers["probe"]
    first = server.pid
    assert first is not None
    (tmp_path / "broken-probe").write_text("", encoding="utf-8")  # restarts now fail
    os.kill(first, signal.SIGKILL)
    await live.waiter.until(lambda: live.bus.state.mcp["probe"]["status"] == "failed")
    events = mcp_events(live, "probe")
    assert [p["status"] for p in events] == ["ready", "crashed", "crashed", "crashed", "failed"]
    assert all("BROKEN: refusing to start" in p["detail"] for p in events[2:4])
    assert live.bus.state.mcp["probe"]["restarts"] == 0
    assert server.failed
    tid = live.sup.spawn(
        "a",
        "touch it",
        task_id="late",
        script=[
            {"tool": "probe__touch", "args": {"path": str(tmp_path / "late.txt")}},
            {"tool": "finish", "args": {"answer": "ok"}},
        ],
    )
    await live.waiter.until(ended(live, tid))
    [res] = results(live, tid, "probe__touch")
    assert res["ok"] is False and "keeps crashing" in res["result"]
    assert not (tmp_path / "late.txt").exists()


async def test_long_results_are_truncated(live_factory: StartLive, tmp_path: Path) -> None:
    live: Live = await live_factory(project(probe_server(tmp_path), ["probe"]))
    limit = mcp_module.MAX_RESULT_CHARS
    text = await hub(live.sup).call("probe__big", {"size": limit + 5000})
    assert text == "x" * limit + f"\n[truncated at {limit} characters]"
    assert await hub(live.sup).call("probe__big", {"size": 10}) == "x" * 10


# --- stderr, start failures, processes, environment -------------------------------------


async def test_stderr_goes_to_log_file_not_terminal(
    live_factory: StartLive, tmp_path: Path, log_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log_dir.mkdir()
    (log_dir / "mcp-noisy.log").write_text("an earlier session\n", encoding="utf-8")
    live: Live = await live_factory(project(probe_server(tmp_path, "noisy"), ["noisy"]))
    assert hub(live.sup).servers["noisy"].log_path == log_dir / "mcp-noisy.log"
    await live.sup.close()  # the server has exited, so its stderr is all written
    text = (log_dir / "mcp-noisy.log").read_text(encoding="utf-8")
    assert text.startswith("an earlier session\n")  # appended, not replaced
    assert "PROBE-STDERR-noisy" in text
    out, err = capfd.readouterr()
    assert "PROBE-STDERR" not in out and "PROBE-STDERR" not in err


async def test_missing_command_is_a_start_error(bare_factory: StartBare, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-server")
    bare = await bare_factory(project(server_toml("ghost", missing), ["ghost"]))
    with pytest.raises(McpStartError) as info:
        await bare.sup.start()
    message = str(info.value)
    assert "'ghost'" in message and "command not found" in message and missing in message
    assert not bare.sup.runs  # no thread ran
    [end] = [e for e in bare.events if e.kind is EventKind.SESSION_ENDED]
    assert end.payload["reason"] == "failed to start" and "'ghost'" in end.payload["error"]


async def test_server_that_exits_at_once_reports_its_last_words(
    live_factory: StartLive, tmp_path: Path
) -> None:
    not_repo = tmp_path / "plain-folder"
    not_repo.mkdir()
    servers = server_toml("git", GIT_SERVER, ["--repository", str(not_repo)])
    with pytest.raises(McpStartError) as info:
        await live_factory(project(servers, ["git"]))
    message = str(info.value)
    assert "'git'" in message
    assert f"{not_repo} is not a valid Git repository" in message  # its last stderr line


async def test_server_that_never_answers_times_out_at_start(bare_factory: StartBare) -> None:
    silent = server_toml(
        "mute", "{python}", ["-c", "import sys; sys.stdin.read()"], "startup_timeout_s = 0.5"
    )
    bare = await bare_factory(project(silent, ["mute"]))
    with pytest.raises(McpStartError) as info:
        await bare.sup.start()
    assert "'mute'" in str(info.value) and "no answer within 0.5 s" in str(info.value)
    pid = hub(bare.sup).servers["mute"].pid
    assert pid is not None and gone(pid)


async def test_one_bad_server_fails_the_start_and_stops_the_others(
    bare_factory: StartBare, tmp_path: Path
) -> None:
    servers = time_server() + server_toml("ghost", str(tmp_path / "nope"))
    bare = await bare_factory(project(servers, ["time", "ghost"]))
    with pytest.raises(McpStartError) as info:
        await bare.sup.start()
    message = str(info.value)
    assert "'ghost'" in message and "'time'" not in message  # only the culprit is named
    pid = hub(bare.sup).servers["time"].pid
    assert pid is not None and gone(pid)  # the server that did start was stopped


async def test_close_leaves_no_server_processes(live_factory: StartLive, tmp_path: Path) -> None:
    live: Live = await live_factory(
        project(time_server() + probe_server(tmp_path), ["time", "probe"])
    )
    pids = [s.pid for s in hub(live.sup).servers.values()]
    assert all(pid is not None and not gone(pid) for pid in pids)
    await live.sup.close()
    assert all(gone(pid) for pid in pids if pid is not None)


async def test_close_after_a_restart_leaves_no_processes(live_factory: StartLive) -> None:
    live: Live = await live_factory(project(time_server(), ["time"]))
    server = hub(live.sup).servers["time"]
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await live.waiter.until(lambda: live.bus.state.mcp["time"]["restarts"] >= 1)
    second = server.pid
    assert second is not None and second != first
    await live.sup.close()
    assert gone(first) and gone(second)


async def test_secrets_do_not_reach_the_server_unless_listed(
    live_factory: StartLive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_API_KEY", "fake-secret-value-123456")
    monkeypatch.setenv("TOWER_TEST_PLAIN", "plain-value")
    servers = time_server() + probe_server(
        tmp_path, "keyed", extra='env = { FAKE_API_KEY = "${FAKE_API_KEY}", MODE = "x" }'
    )
    live: Live = await live_factory(project(servers, ["time", "keyed"]))
    plain = environ(hub(live.sup).servers["time"].pid or -1)
    assert "FAKE_API_KEY" not in plain
    assert "fake-secret-value-123456" not in plain.values()
    assert plain.get("TOWER_TEST_PLAIN") == "plain-value"  # ordinary variables pass
    keyed = environ(hub(live.sup).servers["keyed"].pid or -1)
    assert keyed.get("FAKE_API_KEY") == "fake-secret-value-123456"
    assert keyed.get("MODE") == "x"


# --- placeholders and working folders ---------------------------------------------------


def cwd_of(pid: int | None) -> Path:
    assert pid is not None
    return Path(os.readlink(f"/proc/{pid}/cwd"))


async def test_placeholders_and_working_folder(live_factory: StartLive, tmp_path: Path) -> None:
    servers = probe_server(tmp_path, "here", args=["{project}"]) + probe_server(
        tmp_path, "there", extra='cwd = "{project}/sub"'
    )
    live: Live = await live_factory(project(servers, ["here", "there"]), {"sub/keep.txt": ""})
    root = live.project.root
    here, there = hub(live.sup).servers["here"], hub(live.sup).servers["there"]
    assert cwd_of(here.pid) == root  # the project folder by default
    assert cwd_of(there.pid) == root / "sub"
    log = here.log_path.read_text(encoding="utf-8")
    assert f"PROBE-STDERR-here {root}" in log  # {project} in args
    assert "{python}" not in Path(f"/proc/{here.pid}/cmdline").read_text()


def test_command_problems_names_missing_commands_and_folders(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", "", {"serve.sh": "#!/bin/sh\n"})
    toml = project(
        server_toml("ok", TIME_SERVER)
        + server_toml("local", "./serve.sh")
        + server_toml("ghost", "no-such-mcp-command-xyz")
        + server_toml("lost", TIME_SERVER, extra='cwd = "{project}/nowhere"'),
        [],
    )
    problems = command_problems(parse_project(toml, root))
    assert problems == [
        "mcp_servers[2].command: command not found: 'no-such-mcp-command-xyz'",
        "mcp_servers[3].cwd: no such folder: '{project}/nowhere'",
    ]


# --- bugs: relative and missing working folders -----------------------------------------


async def test_relative_cwd_is_inside_the_project_folder(
    live_factory: StartLive, tmp_path: Path
) -> None:
    """`cwd = "sub"` means the project's sub folder, whichever folder tower runs from
    (tests run from the repository root, which has no `sub`)."""
    servers = probe_server(tmp_path, "rel", extra='cwd = "sub"')
    live: Live = await live_factory(project(servers, ["rel"]), {"sub/keep.txt": ""})
    assert cwd_of(hub(live.sup).servers["rel"].pid) == live.project.root / "sub"


def test_check_finds_a_relative_cwd_in_the_project_folder(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", "", {"sub/keep.txt": ""})
    toml = project(server_toml("s", TIME_SERVER, extra='cwd = "sub"'), [])
    assert command_problems(parse_project(toml, root)) == []


async def test_missing_cwd_is_not_reported_as_a_missing_command(
    bare_factory: StartBare, tmp_path: Path
) -> None:
    lost = tmp_path / "no-such-folder"
    servers = server_toml("time", TIME_SERVER, extra=f"cwd = {q(str(lost))}")
    bare = await bare_factory(project(servers, ["time"]))
    with pytest.raises(McpStartError) as info:
        await bare.sup.start()
    message = str(info.value)
    assert "'time'" in message
    assert "command not found" not in message  # mcp-server-time is there
    assert str(lost) in message
