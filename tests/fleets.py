"""A private place for fleets in a test: its own runtime folder (sockets), a copy of
tax_return, a database path, and on the way out every fleet started there killed and the
folder removed. Used by the attach, run-as-a-view and browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import REPO, tower


@contextlib.contextmanager
def fleet_place(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """{"env", "runtime", "proj", "db"}; a socket's path is at most 107 bytes, so the
    runtime folder is a short one of its own, not under tmp_path."""
    runtime = Path(tempfile.mkdtemp(prefix="tw-"))
    proj = tmp_path / "tax_return"
    shutil.copytree(REPO / "sample_projects" / "tax_return", proj)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    try:
        yield {"env": env, "runtime": runtime, "proj": proj, "db": tmp_path / "t.db"}
    finally:
        for row in ls(env):
            if row["status"] == "running":
                os.kill(int(row["pid"]), signal.SIGKILL)
        shutil.rmtree(runtime, ignore_errors=True)


def ls(env: dict[str, str]) -> list[dict[str, Any]]:
    """`tower ls --json` in that place."""
    return json.loads(tower("ls", "--json", env=env).stdout or "[]")
