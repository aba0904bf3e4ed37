"""Shared fixtures: projects from TOML text, a live supervisor on a real SQLite file, and a
waiter that resolves on bus events (tests wait on conditions, never on sleeps)."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

# Tests never write to the user's real folders: tower's database, workspaces, tower.log, MCP
# logs and config go to a folder of this test run (the CLI's subprocesses inherit it). The
# cache folder is left alone: the opt-in real-model test finds its model there.
TEST_HOME = Path(tempfile.mkdtemp(prefix="tower-tests-"))
for _var in ("XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
    os.environ[_var] = str(TEST_HOME / _var.lower())
atexit.register(shutil.rmtree, TEST_HOME, True)
# (tower is imported after this, so that nothing it sets up sees the real folders)

from tests.fake_openai import FakeOpenAI  # noqa: E402
from tests.helpers import write_project  # noqa: E402
from tower.core.bus import Bus  # noqa: E402
from tower.core.events import Event, EventKind  # noqa: E402
from tower.core.messages import of_thread  # noqa: E402
from tower.core.project import Project, load_project  # noqa: E402
from tower.core.store import Store  # noqa: E402
from tower.core.supervisor import ApproveMode, Supervisor  # noqa: E402


class Waiter:
    """Resolves `until(pred)` on the first event after which pred() holds."""

    def __init__(self, bus: Bus) -> None:
        self._waits: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        bus.subscribe(self._on_event)

    def _on_event(self, _ev: Event) -> None:
        for pred, fut in list(self._waits):
            if not fut.done() and pred():
                fut.set_result(None)
                self._waits.remove((pred, fut))

    async def until(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        if pred():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waits.append((pred, fut))
        await asyncio.wait_for(fut, timeout)


@dataclass
class Live:
    project: Project
    store: Store
    bus: Bus
    sup: Supervisor
    waiter: Waiter
    events: list[Event] = field(default_factory=list)

    def kinds(self, thread: str, kind: EventKind) -> list[Event]:
        return [e for e in self.events if e.thread == thread and e.kind is kind]

    def view(self, thread: str):
        return self.bus.state.threads[thread]

    def sent(self, thread: str) -> list[dict[str, Any]]:
        """What the thread's model was last sent, folded from the log (an ended thread
        keeps no messages in memory)."""
        prompts = {a.name: a.system_prompt for a in self.project.agents}
        return of_thread(self.events, thread, prompts)

    def item_of(self, thread: str) -> str:
        items = [i for i in self.bus.state.inbox.values() if i.thread == thread]
        assert len(items) == 1, items
        return items[0].id


def ended(live: Live, *tids: str) -> Callable[[], bool]:
    """A condition for Waiter.until: every named thread (default "t") exists and has ended."""
    names = tids or ("t",)
    return lambda: all(t in live.bus.state.threads and live.view(t).state.ended for t in names)


@pytest.fixture
async def live_factory(tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """Starts a supervisor on a project written to tmp_path; closes everything afterwards."""
    opened: list[Live] = []

    async def start(
        toml: str,
        files: dict[str, str] | None = None,
        approve: ApproveMode = None,
        spawn_tasks: bool = True,
    ) -> Live:
        root = write_project(tmp_path / f"proj{len(opened)}", toml, files)
        project = load_project(root)
        store = await Store.open(tmp_path / "tower.db")
        bus = Bus(store, secrets={})
        live_events: list[Event] = []
        bus.subscribe(live_events.append)
        sup = Supervisor(project, bus, approve=approve, workspaces_dir=tmp_path / "ws")
        live = Live(project, store, bus, sup, Waiter(bus), live_events)
        opened.append(live)
        await sup.start(spawn_tasks=spawn_tasks)
        return live

    yield start
    for live in opened:
        try:
            await live.sup.close()
        finally:
            await live.store.close()


@pytest.fixture
async def fake_server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """tests/fake_openai.py's server, started, with no provider variable set (only a
    project's api_base leads to it); a request it had no scripted reply for fails the test."""
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    async with FakeOpenAI() as srv:
        yield srv
        assert srv.unscripted == 0, f"{srv.unscripted} request(s) found no scripted reply"
