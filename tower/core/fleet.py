"""Finding and starting fleets: what `tower up` does, for the CLI and the TUI alike.

A fleet is a `tower serve` process (tower/core/service.py) running one session. `up`
reuses the fleet already running for a project (or for the session asked for), resumes one
whose service died, or starts a new one, and waits until views can connect. The service
runs in its own process group with no tie to the terminal, so a closed terminal, a killed
view or a dropped SSH connection never stops it.

Blocking (a process start and a readline): callers run it in a thread (the TUI does, so its
first frame is not held up).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tower.core.service import Listed, fleet_dir, listed, socket_path
from tower.core.wire import ServiceError

READY_TIMEOUT_S = 120.0


class StartError(ServiceError):
    """A service that could not start: its own one-line errors (unknown models, missing
    keys…), one per line, as `tower serve` printed them."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "the service did not start")
        self.problems = problems or [str(self)]


@dataclass(frozen=True, slots=True)
class Up:
    """The fleet a caller can attach to, and how it came to be running."""

    session: str
    socket: Path
    pid: int | None
    how: Literal["reused", "resumed", "started"]


def running() -> list[Listed]:
    return [s for s in listed() if s.status == "running"]


def find(ref: str) -> Listed:
    """The running fleet whose session id is `ref` or starts with it."""
    fleets = running()
    exact = [s for s in fleets if s.session == ref]
    found = exact or [s for s in fleets if s.session.startswith(ref)]
    if not found:
        names = ", ".join(s.session for s in fleets) or "none is running"
        raise ServiceError(f"no running fleet {ref!r} ({names}); `tower ls` lists them")
    if len(found) > 1:
        raise ServiceError(
            f"{ref!r} names {len(found)} fleets ({', '.join(s.session for s in found)})"
        )
    return found[0]


def of_project(root: Path) -> tuple[Listed | None, Listed | None]:
    """The project's running fleet and its newest crashed one (a service that died)."""
    fleets = [s for s in listed() if s.project_dir == str(root)]
    live = next((s for s in fleets if s.status == "running"), None)
    crashed = next((s for s in fleets if s.status == "crashed"), None)
    return live, crashed


def up(root: Path, name: str, db: str | Path | None, resume: str | None = None) -> Up:
    """The project's fleet, running: reused, resumed after its service died, or started
    (with `resume`: that recorded session continued, or reused if it runs already).
    StartError carries the service's own errors when it cannot start; a crashed fleet that
    cannot be resumed is forgotten, so the next `up` starts anew."""
    if resume is not None:
        live = next((s for s in running() if s.session == resume), None)
        if live is not None:
            return Up(live.session, Path(live.socket), live.pid, "reused")
        return _start(["--resume", resume] + (["--db", str(db)] if db else []), name, "resumed")
    live, crashed = of_project(root)
    if live is not None:
        return Up(live.session, Path(live.socket), live.pid, "reused")
    if crashed is not None:
        try:
            return _start(["--resume", crashed.session, "--db", crashed.db], name, "resumed")
        except StartError:
            Path(crashed.socket).with_suffix(".json").unlink(missing_ok=True)
            raise
    return _start([str(root)] + (["--db", str(db)] if db else []), name, "started")


def _start(args: list[str], name: str, how: Literal["resumed", "started"]) -> Up:
    """Starts `tower serve` in its own session and waits for its `ready SESSION` line; its
    errors are read back if it dies before that."""
    log = fleet_dir() / f"serve-{os.getpid()}-{time.time_ns()}.log"
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tower", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready, or until the process dies
    proc.stdout.close()
    if line.startswith("ready "):
        log.unlink(missing_ok=True)
        session = line.split()[1]
        # The service is our child while we live: reap it when it ends (no zombie for
        # `tower down` or `tower ls` to mistake for a live fleet).
        threading.Thread(target=proc.wait, name="tower-fleet-reaper", daemon=True).start()
        return Up(session, socket_path(session), proc.pid, how)
    try:
        proc.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
    problems = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    log.unlink(missing_ok=True)
    raise StartError(problems or [f"tower: the service for {name} did not start"])
