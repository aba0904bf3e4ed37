"""Threads' folders: a private copy of the task's workspace, by default.

A copy is made aside and renamed into place, so a crash mid-copy never leaves half a
workspace; every workspace refuses writes to the session's own database files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tower.core.project import Project
from tower.core.run import CommandError, ThreadRun
from tower.core.tools import Workspace


def prepare(
    th: ThreadRun,
    project: Project,
    copies: Path | None,
    session_id: str,
    db: Path | None,
) -> Workspace:
    """Gives the thread its folder (blocking I/O: run it in a worker thread). `copies`: the
    folder of this tower's workspace copies; `db`: the session's database, never writable."""
    src = th.workspace_src
    if src is not None and not project.project.copy_workspaces:
        return _workspace(src, db)
    if copies is None:
        if src is not None:
            return _workspace(src, db)
        raise RuntimeError("no workspaces folder configured")
    dest = copies / session_id / th.id
    if not dest.exists():
        if src is not None:
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(src, partial, symlinks=True)
            os.replace(partial, dest)
        else:
            dest.mkdir(parents=True, exist_ok=True)
    return _workspace(dest, db)


_shared: dict[tuple[Path, Path | None], Workspace] = {}


def _workspace(root: Path, db: Path | None) -> Workspace:
    """A Workspace holds no state but its paths, so threads working in one folder (a
    project without copies: ten thousand copies of a task) share one."""
    ws = _shared.get((root, db))
    if ws is None:
        protected = (
            (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if db else ()
        )
        ws = _shared[(root, db)] = Workspace(root, protected=protected)
    return ws


def typed_folder(project: Project, rel: str, copies: Path | None) -> Path:
    """A workspace folder the person typed, relative to the project root: it must exist
    inside it and must not hold tower's own copies."""
    root = project.root.resolve()
    path = (root / rel).resolve()
    if not rel.strip() or not path.is_relative_to(root):
        raise CommandError(f"workspace {rel!r} is not a folder inside the project ({root})")
    if not path.is_dir():
        raise CommandError(f"workspace {rel!r}: no such folder in the project ({root})")
    if copies is not None and copies.resolve().is_relative_to(path):
        raise CommandError(f"workspace {rel!r} holds tower's own workspaces folder")
    return path


def share_after(root: Path, session_copies: Path, after: list[str]) -> None:
    """A task of a graph reads what its dependencies wrote: a copy of each one's workspace
    under `after/<thread>/` in its own (made once; writing there changes nothing of theirs,
    and a resumed thread keeps the copy it had)."""
    for tid in after:
        src = session_copies / tid
        dest = root / "after" / tid
        if not src.is_dir() or dest.exists():
            continue
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(src, partial, symlinks=True, ignore=shutil.ignore_patterns("after"))
        os.replace(partial, dest)
