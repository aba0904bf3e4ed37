"""The fleet as a service (tower/core/service.py) and its protocol (tower/core/wire.py), in
process: views get a snapshot and then every event and fold them to the service's own
state; commands from two views at once; a view that falls behind gets a fresh snapshot; a
peer that is not the owner, a view that speaks another version and a stale socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_project
from tower.core import service as service_mod
from tower.core import wire
from tower.core.client import ServiceClient
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.core.project import load_project
from tower.core.service import listed, serve, socket_path
from tower.core.state import state_to_dict
from tower.core.store import Store
from tower.core.wire import ServiceError

ASKING = """
[project]
name = "svc"
seed = 1
retry_backoff_s = 0

[[agents]]
name = "a"
cascade = ["sim/instant"]
tools = ["ask_human", "write_file", "finish"]

[[tasks]]
id = "t"
agent = "a"
repeat = 3
prompt = "ask, then write"
workspace = "ws"

[[tasks.script]]
tool = "ask_human"
args = { question = "Which year?" }

[[tasks.script]]
tool = "write_file"
args = { path = "out.txt", content = "{n}" }

[[tasks.script]]
tool = "finish"
args = { answer = "written" }
"""


@pytest.fixture
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A short private runtime folder (a Unix socket's path is at most 107 bytes)."""
    path = tempfile.mkdtemp(prefix="tw-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", path)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


class Running:
    def __init__(self, task: asyncio.Task[str], stop: asyncio.Event, session: str) -> None:
        self.task, self.stop, self.session = task, stop, session

    @property
    def sock(self) -> Path:
        return socket_path(self.session)


@pytest.fixture
async def fleet(tmp_path: Path, runtime_dir: Path) -> AsyncIterator[Running]:
    root = write_project(tmp_path / "proj", ASKING, {"ws/readme.txt": "hi"})
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(tmp_path / "t.db", load_project(root), ready=started.set_result, stop=stop)
    )
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises what kept it from starting
    running = Running(task, stop, started.result())
    yield running
    stop.set()
    await task


async def until(client: ServiceClient, pred: Any, timeout: float = 30.0) -> None:
    """Reads (and folds) messages until pred() holds."""
    async with asyncio.timeout(timeout):
        while not pred():
            await client.next_message()


def _questions(state: Any) -> list[str]:
    return sorted(i.id for i in state.inbox.values() if i.kind is InboxKind.QUESTION)


async def test_two_views_fold_to_the_services_state_with_decisions_from_both(
    fleet: Running, tmp_path: Path
) -> None:
    """Two views attached at once: each answers some questions and approves some writes;
    both end holding exactly the state the service holds, and the log has every decision."""
    a = await ServiceClient.connect(fleet.sock, "a")
    b = await ServiceClient.connect(fleet.sock, "b")
    assert a.session == b.session == fleet.session
    await until(a, lambda: len(_questions(a.state)) == 3)
    q = _questions(a.state)
    await a.command("reply", target=q[0], text="2024")
    await b.command("reply", target=q[1], text="2025")
    await a.command("reply", target=q[2], text="2026")

    def approvals(c: ServiceClient) -> list[str]:
        return sorted(i.id for i in c.state.inbox.values() if i.kind is InboxKind.APPROVAL)

    await until(b, lambda: len(approvals(b)) == 3)
    w = approvals(b)
    await b.command("approve", item=w[0])
    await a.command("approve", item=w[1])
    await b.command("deny", item=w[2], reason="not that one")
    done = lambda c: len(c.state.threads) == 3 and c.state.all_ended  # noqa: E731
    await until(a, lambda: done(a))
    await until(b, lambda: done(b))
    # The service's own state, read the same way: a fresh view's snapshot.
    c = await ServiceClient.connect(fleet.sock, "c")
    for view in (a, b):
        await until(view, lambda v=view: v.state.last_seq == c.state.last_seq)
        assert state_to_dict(view.state) == state_to_dict(c.state)
    assert {v.state for v in c.state.threads.values()} == {ThreadState.DONE}
    for view in (a, b, c):
        await view.close()
    fleet.stop.set()
    await fleet.task
    store = await Store.open(tmp_path / "t.db")
    events = [e async for e in store.events(fleet.session)]
    await store.close()
    closed = [e.payload["resolution"] for e in events if e.kind is EventKind.INBOX_CLOSED]
    assert sorted(closed) == ["answered"] * 3 + ["approved"] * 2 + ["denied"]


async def test_commands_that_cannot_apply_are_one_line_errors(fleet: Running) -> None:
    async with await ServiceClient.connect(fleet.sock) as c:
        with pytest.raises(ServiceError, match=r"^no thread 'ghost'$"):
            await c.command("pause", thread="ghost")
        with pytest.raises(ServiceError, match="unknown command 'frobnicate'"):
            await c.command("frobnicate")
        with pytest.raises(ServiceError, match="approve: missing item"):
            await c.command("approve")
        # The service still answers afterwards.
        state = await c.command("state")
        assert state["session"] == fleet.session and state["inbox"] >= 0
        spawned = await c.command("spawn", prompt="one more", agent="a")
        assert spawned["thread"] in c.state.threads or spawned["thread"].startswith("a")


async def test_a_scripts_connection_is_sent_no_state_and_is_no_view(fleet: Running) -> None:
    """`tower ls` and the steering commands connect for commands only: a snapshot of a
    100,000-thread run would be tens of megabytes per `tower ls`."""
    async with (
        await ServiceClient.connect(fleet.sock, "tui") as view,
        await ServiceClient.connect(fleet.sock, "cli", watch=False) as script,
    ):
        assert script.state.threads == {} and view.state.threads  # the view has them
        state = await script.command("state")
        assert state["views"] == {"tui": 1}  # the script is not a view
        assert state["progress"]["total"] == len(view.state.threads) + state["not_started"]
        spawned = await script.command("spawn", prompt="one more", agent="a")
        assert script.state.threads == {}  # no event reached it
        await until(view, lambda: spawned["thread"] in view.state.threads)


async def test_a_view_that_falls_behind_gets_a_fresh_snapshot(
    fleet: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view that reads nothing while megabytes of events arrive (its socket and the
    service's write buffer full, then its queue): the fleet goes on, and when the view
    reads again it gets a resync (a snapshot) instead of the backlog, and ends equal to
    the service."""
    monkeypatch.setattr(service_mod, "QUEUE_MAX", 5)
    slow = await ServiceClient.connect(fleet.sock, "slow")
    fast = await ServiceClient.connect(fleet.sock, "fast")
    long = "Summarise this. " * 200  # ~3 KB per spawn event
    for _ in range(300):
        await fast.command("spawn", prompt=long, agent="a")
    await until(
        fast, lambda: len(fast.state.threads) == 303 and fast.state.count(ThreadState.DONE) == 300
    )
    target = fast.state.last_seq
    await until(slow, lambda: slow.state.last_seq >= target)
    assert slow.resyncs >= 1
    await until(fast, lambda: fast.state.last_seq >= slow.state.last_seq)
    assert state_to_dict(slow.state) == state_to_dict(fast.state)
    await slow.close()
    await fast.close()


async def test_a_view_of_another_protocol_version_gets_one_clear_line(fleet: Running) -> None:
    reader, writer = await asyncio.open_unix_connection(str(fleet.sock))
    writer.write(wire.encode({"type": "hello", "version": 999, "client": "future"}))
    await writer.drain()
    msg = wire.decode(await reader.readline())
    assert msg["type"] == "error"
    assert msg["message"] == (
        "protocol version 999 is not spoken here (this tower speaks 1); use the same tower "
        "version for the service and its views"
    )
    assert await reader.readline() == b""  # and it hangs up
    writer.close()


async def test_a_peer_that_is_not_the_owner_is_refused(fleet: Running) -> None:
    """The service asks the kernel who connected (SO_PEERCRED): a uid other than the
    owner's is refused before any state is sent."""
    svc_uid = os.getuid() + 1  # as if the service belonged to someone else
    service = next(s for s in _services() if s.path == fleet.sock)
    service.allowed_uid = svc_uid
    with pytest.raises(ServiceError, match=rf"refused: uid {os.getuid()} does not own"):
        await ServiceClient.connect(fleet.sock)
    service.allowed_uid = os.getuid()
    async with await ServiceClient.connect(fleet.sock) as c:
        assert c.session == fleet.session


def _services() -> list[service_mod.Service]:
    import gc

    return [o for o in gc.get_objects() if isinstance(o, service_mod.Service)]


def test_the_socket_and_its_folder_are_private(fleet: Running) -> None:
    assert fleet.sock.stat().st_mode & 0o777 == 0o600
    assert fleet.sock.parent.stat().st_mode & 0o777 == 0o700
    (row,) = listed()
    assert (row.session, row.status, row.pid) == (fleet.session, "running", os.getpid())


async def test_a_stale_socket_is_replaced_and_listed_as_crashed(
    tmp_path: Path, runtime_dir: Path
) -> None:
    """A dead service's socket file (nobody listens) and info (its pid is gone): `ls` says
    crashed and removes the socket; a new service on that path starts."""
    session = "20261130-000000-dead"
    sock_path = socket_path(session)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))  # bound, never listening: what a killed process leaves
    s.close()
    info = sock_path.with_suffix(".json")
    info.write_text(
        json.dumps(
            {"session": session, "pid": 2**22 + 12345, "socket": str(sock_path), "started": 1.0}
        )
    )
    (row,) = listed()
    assert (row.session, row.status) == (session, "crashed")
    assert not sock_path.exists()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))
    s.close()
    svc = service_mod.Service(control=None, path=sock_path)  # type: ignore[arg-type]
    await svc.start(lambda _fn: None)
    assert service_mod.listening(sock_path)
    await svc.close()
    assert not sock_path.exists()


HOSTILE_LINES = [
    b"not json\n",
    b"[1, 2, 3]\n",
    b'{"no": "type"}\n',
    b'{"type": "command", "id": "seven", "verb": "state"}\n',
    b'{"type": "command", "id": 1, "verb": "state", "args": [1]}\n',
    b'{"type": "command", "id": 2, "verb": "approve", "args": {"item": ""}}\n',
    b'{"type": "command", "id": 3, "verb": "kill", "args": {"thread": {"x": 1}}}\n',
    b'{"type": "command", "id": 4, "verb": "spawn", "args": {"prompt": "p", "agent": "nope"}}\n',
    b'{"type": "command", "id": 5, "verb": "spawn", "args": {"prompt": "p", "budget_usd": "x"}}\n',
    b"\xff\xfe\xfd\n",
]


async def test_hostile_lines_get_one_line_errors_and_the_service_goes_on(
    fleet: Running,
) -> None:
    """After hello, every malformed line is answered with an error naming it; none ends the
    connection, the service, or changes the state; then a good command still works."""
    async with await ServiceClient.connect(fleet.sock) as c:
        before = len(c.state.threads)
        for line in HOSTILE_LINES:
            c.writer.write(line)
            await c.writer.drain()
            msg = await c.next_message()
            while msg["type"] == "event":
                msg = await c.next_message()
            assert msg["type"] == "error", (line, msg)
            assert msg["message"] and "\n" not in msg["message"], (line, msg)
            assert "Traceback" not in msg["message"]
        state = await c.command("state")
        assert state["session"] == fleet.session
        assert len(c.state.threads) == before


LATER = """
[[tasks]]
id = "later"
agent = "a"
prompt = "added while the fleet ran"

[[tasks.script]]
tool = "finish"
args = { answer = "late but done" }
"""


async def _notice(client: ServiceClient) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while (msg := await client.next_message())["type"] != "notice":
            pass
    return msg


async def test_the_fleet_follows_its_edited_tower_toml_and_tells_every_view(
    fleet: Running, tmp_path: Path
) -> None:
    """No view needs to be the one watching: the service reloads tower.toml itself; a good
    edit applies (its new task can be spawned over the socket), a bad one changes nothing,
    and every view is told which."""
    toml = tmp_path / "proj" / "tower.toml"
    async with (
        await ServiceClient.connect(fleet.sock) as one,
        await ServiceClient.connect(fleet.sock) as two,
    ):
        with pytest.raises(ServiceError, match="later"):
            await one.command("spawn_task", task="later")
        toml.write_text(ASKING + LATER)
        for view in (one, two):
            msg = await _notice(view)
            assert (msg["title"], msg["reloaded"]) == ("tower.toml reloaded", True)
            assert "4 task(s)" not in msg["message"] and "2 task(s)" in msg["message"]
        tid = await one.command("spawn_task", task="later")
        await until(one, lambda: one.state.threads.get(tid) is not None)
        await until(one, lambda: one.state.threads[tid].state is ThreadState.DONE)
        toml.write_text(ASKING + LATER + '\n[limits]\nmax_concurrent = "many"\n')
        msg = await _notice(two)
        assert (msg["title"], msg["severity"], msg["reloaded"]) == (
            "tower.toml not reloaded",
            "error",
            False,
        )
        assert "max_concurrent" in msg["message"] and "kept the previous" in msg["message"]
        tid = await two.command("spawn_task", task="later")  # the good edit still applies
        assert tid.startswith("later")


SLOW = ASKING.replace(
    "[[agents]]", '[models."sim/small"]\nlatency_s = 60\n\n[[agents]]', 1
).replace('cascade = ["sim/instant"]', 'cascade = ["sim/small"]')


async def test_views_get_the_call_gates_figures(tmp_path: Path, runtime_dir: Path) -> None:
    """A view's budget bar shows the fleet's call gate: every view gets its counters once a
    second. Three calls that take a minute are in flight, and the figures say so."""
    root = write_project(tmp_path / "proj", SLOW, {"ws/readme.txt": "hi"})
    stop = asyncio.Event()
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(tmp_path / "t.db", load_project(root), ready=started.set_result, stop=stop)
    )
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    try:
        sock = socket_path(started.result())
        async with await ServiceClient.connect(sock) as view:
            async with asyncio.timeout(30):
                while True:
                    msg = await view.next_message()
                    if msg["type"] == "figures" and msg["in_flight"] == 3:
                        break
            (svc,) = [s for s in _services() if s.path == sock and s.views]
            gate = svc.control.calls()
            assert (msg["in_flight"], msg["waiting"]) == (gate.in_flight, gate.waiting)
            assert isinstance(msg["lag_s"], float)
    finally:
        stop.set()
        await task
