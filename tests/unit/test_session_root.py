"""The composition root (core/session.py): one place opens, checks, wires, starts and closes a
session, for run, resume, fork, experiment and the TUI.

What must hold: the supervisor is stopped (ending the log) before the store closes; a
failure on the way closes the store again; the preflight's problems are one line each; a
resume folds the recorded log into the bus; every headless entry point goes through the
root; and the CLI maps exactly the listed expected failures to one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import write_project
from tower.core import session as session_mod
from tower.core.events import EventKind
from tower.core.project import PROJECT_FILE, ProjectError, load_project
from tower.core.replay import state_at
from tower.core.session import (
    SESSION_ERRORS,
    PreflightError,
    SessionRuntime,
    open_session,
    preflight,
    run_headless,
)
from tower.core.store import Store

PROJECT = """
[project]
name = "root"
retry_backoff_s = 0

[[agents]]
name = "a"
cascade = ["{model}"]
tools = ["finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "p"

[[tasks.script]]
tool = "finish"
args = {{ answer = "ok" }}
"""


def sim_project(tmp_path: Path, model: str = "sim/instant", extra: str = "") -> Path:
    return write_project(tmp_path / "proj", PROJECT.format(model=model) + extra)


def rows(db: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT id, status FROM sessions ORDER BY started").fetchall()


def last_event(db: Path, session: str) -> tuple[str, str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT kind, payload FROM events WHERE session = ? ORDER BY seq DESC LIMIT 1",
            (session,),
        ).fetchone()


@contextlib.contextmanager
def store_closes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Records every Store.close (and, once wired, every Supervisor.close) in call order."""
    calls: list[str] = []
    store_close = Store.close
    sup_close = session_mod.Supervisor.close

    async def closing_store(self: Store) -> None:
        calls.append("store")
        await store_close(self)

    async def closing_sup(self: Any, reason: str = "finished") -> None:
        calls.append(f"supervisor:{reason}")
        await sup_close(self, reason)

    monkeypatch.setattr(Store, "close", closing_store)
    monkeypatch.setattr(session_mod.Supervisor, "close", closing_sup)
    yield calls


async def test_close_stops_the_supervisor_then_the_store_and_the_log_ends_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    with store_closes(monkeypatch) as calls:
        runtime = await SessionRuntime.open(db, load_project(sim_project(tmp_path)))
        await runtime.start()
        await runtime.sup.wait_idle()
        await runtime.close("quit")
        await runtime.close("quit")  # twice is harmless
    assert calls == ["supervisor:quit", "store"]
    assert rows(db) == [(runtime.session_id, "clean")]
    kind, payload = last_event(db, runtime.session_id)
    assert kind == EventKind.SESSION_ENDED and '"quit"' in payload


async def test_a_session_never_started_closes_only_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "t.db"
    with store_closes(monkeypatch) as calls:
        async with open_session(db, load_project(sim_project(tmp_path))) as runtime:
            assert not runtime.started
    assert calls == ["store"]
    assert rows(db) == []  # nothing was recorded


async def test_preflight_problems_are_one_line_each_and_nothing_is_left_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = '\n[[mcp_servers]]\nname = "ghost"\ncommand = "no-such-mcp-command-xyz"\n'
    root = sim_project(tmp_path, model="no-such-model-xyz", extra=extra)
    project = load_project(root)
    file = root / PROJECT_FILE
    expected = [
        f"{file}: agents[0].cascade[0]: ",
        f"{file}: mcp_servers[0].command: command not found: 'no-such-mcp-command-xyz'",
    ]
    problems = preflight(project)
    assert len(problems) == 2 and all("\n" not in line for line in problems)
    assert problems[0].startswith(expected[0]) and "no-such-model-xyz" in problems[0]
    assert problems[1] == expected[1]
    db = tmp_path / "t.db"
    with store_closes(monkeypatch) as calls, pytest.raises(PreflightError) as info:
        await SessionRuntime.open(db, project, check=True)
    assert info.value.problems == problems
    assert str(info.value) == "\n".join(problems)
    assert calls == ["store"]  # opened for the check, closed again
    assert rows(db) == []


@contextlib.asynccontextmanager
async def _store(db: Path) -> Any:
    store = await Store.open(db)
    try:
        yield store
    finally:
        await store.close()


async def test_resume_folds_the_recorded_log_into_the_bus(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    project = load_project(sim_project(tmp_path))
    first = await run_headless(project, db, "all")
    session = first.summary["session"]
    async with _store(db) as store:
        expected = await state_at(store, session)
    async with open_session(db, resume=session[:8]) as runtime:  # a prefix names it
        assert runtime.resumed and runtime.status == "clean"
        assert runtime.session_id == session
        assert runtime.bus.seq == expected.last_seq
        assert runtime.state.threads.keys() == expected.threads.keys()
        # What the resume needs was gathered while folding; ended threads left no plan.
        assert runtime.log is not None and runtime.log.started
        assert runtime.log.plans() == [] and runtime.log.rebuilder.ended == set(expected.threads)
        assert runtime.sup.project.root == project.root  # loaded from the session's folder
        assert runtime.nothing_to_resume()


async def test_run_resume_fork_and_experiment_all_open_through_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tower.core.experiment import run_experiment
    from tower.core.session import fork_headless, resume_headless

    opened: list[str | None] = []
    real_open = SessionRuntime.open.__func__  # type: ignore[attr-defined]

    async def counting(cls: type[SessionRuntime], db: Any, project: Any = None, **kw: Any) -> Any:
        opened.append(kw.get("resume"))
        return await real_open(cls, db, project, **kw)

    monkeypatch.setattr(SessionRuntime, "open", classmethod(counting))
    root = sim_project(tmp_path)
    db = tmp_path / "t.db"
    first = await run_headless(load_project(root), db, "all")
    session = first.summary["session"]
    with pytest.raises(session_mod.ResumeError, match="no unfinished thread"):
        await resume_headless(db, session, "all")
    forked = await fork_headless(db, session, 2, "all")
    (root / "experiments").mkdir()
    for name in ("x", "y"):
        (root / "experiments" / f"{name}.toml").write_text("[project]\nseed = 1\n")
    variants = sorted((root / "experiments").glob("*.toml"))
    await run_experiment(root, variants, db)
    assert opened[:2] == [None, session]
    assert opened[2] == forked.summary["session"]
    assert opened[3:] == [None, None]  # one session per variant


@pytest.mark.parametrize("error", SESSION_ERRORS, ids=lambda e: e.__name__)
def test_the_cli_reports_each_expected_failure_as_one_line(error: type[Exception]) -> None:
    from tower.cli import UsageError, _run_session

    async def failing() -> None:
        raise error(["the reason"]) if error is ProjectError else error("the reason")

    with pytest.raises(UsageError) as info:
        _run_session(failing(), None)
    assert info.value.lines == ("tower: the reason",)


def test_an_unexpected_failure_is_not_dressed_as_a_usage_error() -> None:
    from tower.cli import _run_session

    async def failing() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _run_session(failing(), None)
