"""Plain helpers the tests share (the fixtures are in conftest.py): a project folder from
TOML text, the real `tower` CLI in a subprocess, its one-line errors, and a session's events
read straight from the database."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

from tower.core.events import Event

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"  # committed data: release-1.db, snapshot projects
WAIT_S = 30.0  # the cap of a condition wait: only a hung test ever reaches it


def write_project(
    root: Path, toml: str | bytes, files: Mapping[str, str | bytes] | None = None
) -> Path:
    """A project folder: `tower.toml` from `toml` (text is dedented; bytes are written as
    they are, for files that are not UTF-8) and `files` (text or bytes) at paths relative to
    `root`, their folders made as needed. Returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    data = toml if isinstance(toml, bytes) else textwrap.dedent(toml).encode("utf-8")
    (root / "tower.toml").write_bytes(data)
    for rel, content in (files or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def save(path: Path, text: str) -> Path:
    """Saves `text` as an editor does: a new file beside it, renamed over it (so a watcher
    never sees it half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- the CLI in a subprocess ----------------------------------------------------------------


def tower_cmd(*args: str) -> list[str]:
    """The command line of the real CLI, as a user runs it (`python -m tower …`)."""
    return [sys.executable, "-m", "tower", *args]


def tower_env(
    env: Mapping[str, str] | None = None, unset: Iterable[str] = (), home: Path | None = None
) -> dict[str, str]:
    """This process's environment for the CLI: this checkout importable, `home` (when given)
    holding its data and state folders (database, workspaces, tower.log), then `env` on top,
    without the `unset` variables."""
    out = dict(os.environ, PYTHONPATH=str(REPO))
    if home is not None:
        out.update(XDG_DATA_HOME=str(home / "data"), XDG_STATE_HOME=str(home / "state"))
    out.update(env or {})
    for name in unset:
        out.pop(name, None)
    return out


def tower(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    unset: Iterable[str] = (),
    home: Path | None = None,
    cwd: Path = REPO,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """Runs `tower *args` to its end (relative paths are the checkout's) and returns what it
    printed and its exit code; see tower_env for the environment."""
    return subprocess.run(
        tower_cmd(*map(str, args)),
        capture_output=True,
        text=True,
        env=tower_env(env, unset, home),
        cwd=cwd,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The CLI's refusal: exit 2, no traceback, one line on stderr holding every needle.
    Returns the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the database as any reader sees it -----------------------------------------------------


def db_events(db: Path, session: str | None = None) -> list[Event]:
    """A session's events (every session's, with None) in log order, read with sqlite3."""
    query = "SELECT seq, ts, kind, thread, payload FROM events"
    where = " WHERE session = ?" if session is not None else ""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(query + where + " ORDER BY session, seq", (session,) if where else ())
        return [Event.from_row(*r) for r in rows.fetchall()]


# --- processes --------------------------------------------------------------------------------


def pids_running(marker: str) -> list[int]:
    """The host's processes whose command line holds `marker` (say, a `sleep 600.4242` a test
    started), not counting the shells and sandboxes around them."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd and b"sh\0-c" not in cmd and b"bwrap" not in cmd:
                found.append(int(entry))
    return found
