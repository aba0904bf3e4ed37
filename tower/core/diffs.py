"""Unified diffs of what a thread writes: for a `write_file` approval and the files view.

Files are read the way the file tools read them: from an open handle on the workspace, each
path component opened without following links, a link followed only when its target stays
inside. A link pointing outside is never read; the diff says so instead.
"""

from __future__ import annotations

import difflib
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tower.core.events import Event, EventKind
from tower.core.tools.files import PROTECTED_DIRS, ToolError, Workspace, _is_link_or_gone

# What an approval item carries: enough to judge the change, small enough for the log.
MAX_DIFF_LINES = 300
MAX_DIFF_BYTES = 20_000
# The files view has the screen to itself.
VIEW_DIFF_LINES = 5_000
VIEW_DIFF_BYTES = 500_000
MAX_DIFF_FILE_BYTES = 2_000_000  # larger files are named, not diffed
MAX_TREE_FILES = 5_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Unreadable(Exception):
    """A file that cannot be shown as text (binary, too large, not a regular file)."""


def unified(
    path: str,
    old: str | None,
    new: str | None,
    *,
    max_lines: int = MAX_DIFF_LINES,
    max_bytes: int = MAX_DIFF_BYTES,
) -> str:
    """A unified diff of one file; None for `old` is a new file, for `new` a deleted one.

    "" when nothing changes. Capped at max_lines and max_bytes, ending with
    "… N more lines" when cut.
    """
    if old == new:
        return ""
    lines = difflib.unified_diff(
        [] if old is None else old.splitlines(keepends=True),
        [] if new is None else new.splitlines(keepends=True),
        fromfile="/dev/null" if old is None else f"a/{path}",
        tofile="/dev/null" if new is None else f"b/{path}",
        n=3,
    )
    return cap(_terminated(lines), max_lines, max_bytes)


def _terminated(lines: Iterable[str]) -> Iterator[str]:
    """Every diff line ends with one newline; a missing final newline is marked as git does."""
    for line in lines:
        if line.endswith("\n"):
            yield line
        else:
            yield line + "\n"
            if line[:1] in "+- ":
                yield "\\ No newline at end of file\n"


def cap(lines: Iterable[str], max_lines: int, max_bytes: int) -> str:
    """The first lines that fit both caps, then a marker naming how many were left out."""
    kept: list[str] = []
    size = 0
    left = 0
    for line in lines:
        if left or len(kept) >= max_lines or size + len(line.encode()) > max_bytes:
            left += 1
            continue
        kept.append(line)
        size += len(line.encode())
    if left:
        kept.append(f"… {left} more line{'s' if left != 1 else ''}\n")
    return "".join(kept).removesuffix("\n")


# --- reading safely -------------------------------------------------------------------------


def read_text(ws: Workspace, rel: str, max_bytes: int = MAX_DIFF_FILE_BYTES) -> str | None:
    """The text of rel in the workspace; None when there is no such file.

    ToolError when the path leaves the workspace (also through a link) or is a folder;
    Unreadable when it is binary, too large or not a regular file.
    """
    dfd, _names, name = ws._walk(rel, follow_last=True, lenient=True)
    try:
        if not name:
            raise ToolError(f"{rel} is a folder")
        if "/" in name:  # a folder on the way does not exist: neither does the file
            return None
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ToolError(f"path {rel!r} changed while being opened") from None
            raise
    finally:
        os.close(dfd)
    return _read_fd(fd, rel, max_bytes)


def _read_fd(fd: int, rel: str, max_bytes: int) -> str:
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise ToolError(f"{rel} is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable(f"{rel} is not a regular file")
        if st.st_size > max_bytes:
            raise Unreadable(f"{rel} is {st.st_size} bytes: too large to compare")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Unreadable(f"{rel} is over {max_bytes} bytes: too large to compare")
    if b"\x00" in data[:8192]:
        raise Unreadable(f"{rel} is a binary file")
    return data.decode("utf-8", errors="replace")


def relative(ws: Workspace, path: Any) -> str:
    """A model-supplied path as the workspace-relative form a diff names (ToolError if bad)."""
    return "/".join(ws._parts(path)) or "."


def approval_diff(ws: Workspace, args: dict[str, Any]) -> dict[str, str]:
    """The INBOX_OPENED fields for a write_file approval: `diff` against the file as it is
    now, or `diff_note` saying why there is none. Empty when the arguments are unusable."""
    path, content = args.get("path"), args.get("content")
    if not isinstance(content, str) or not isinstance(path, str):
        return {}
    try:
        rel = relative(ws, path)
        old = read_text(ws, path)
    except ToolError as exc:
        return {"diff_note": f"no diff: {exc}"}
    except Unreadable as exc:
        return {"diff_note": f"no diff: {exc}; it would be replaced by {len(content)} chars"}
    except OSError as exc:
        return {"diff_note": f"no diff: {exc.strerror or exc}"}
    diff = unified(rel, old, content)
    if not diff:
        return {"diff": "", "diff_note": f"{rel} already has exactly this content"}
    return {"diff": diff}


# --- what a thread wrote --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str  # relative to the workspace, with /
    status: str  # added | modified | deleted | unchanged
    written: bool  # a write_file of the thread's log names it


def written_paths(events: Iterable[Event], root: Path | None = None) -> list[str]:
    """The files a thread's write_file calls wrote (edited arguments included), in order."""
    calls: dict[str, Any] = {}
    item_call: dict[str, str] = {}
    out: list[str] = []
    ws = Workspace(root) if root is not None else None
    for ev in events:
        p = ev.payload
        if ev.kind is EventKind.TOOL_CALLED and p.get("tool") == "write_file":
            calls[p.get("call_id", "")] = (p.get("args") or {}).get("path")
        elif ev.kind is EventKind.INBOX_OPENED and p.get("call_id"):
            item_call[p["item"]] = p["call_id"]
        elif ev.kind is EventKind.INBOX_CLOSED and isinstance(p.get("args"), dict):
            call = item_call.get(p["item"])
            if call in calls:
                calls[call] = p["args"].get("path")
        elif (
            ev.kind is EventKind.TOOL_RESULT
            and p.get("tool") == "write_file"
            and p.get("ok")
            and isinstance(calls.get(p.get("call_id", "")), str)
        ):
            path = calls[p["call_id"]]
            if ws is not None:
                try:
                    path = relative(ws, path)
                except ToolError:
                    continue
            else:
                path = "/".join(x for x in path.split("/") if x not in ("", "."))
            if path not in out:
                out.append(path)
    return out


def tree_files(root: Path, limit: int = MAX_TREE_FILES) -> list[str]:
    """The regular files under root, relative, sorted; links and protected folders skipped."""
    try:
        top = os.open(root, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out: list[str] = []
    try:
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            dirnames[:] = sorted(
                d for d in dirnames if d not in PROTECTED_DIRS and not _is_link_or_gone(d, dfd)
            )
            for name in sorted(filenames):
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(os.path.normpath(os.path.join(dirpath, name)))
                    if len(out) >= limit:
                        return sorted(out)
    finally:
        os.close(top)
    return sorted(out)


def _content(ws: Workspace | None, rel: str) -> str | Unreadable | None:
    if ws is None:
        return None
    try:
        return read_text(ws, rel)
    except Unreadable as exc:
        return exc
    except (ToolError, OSError) as exc:
        return Unreadable(str(exc))


def compare(root: Path, original: Path | None, written: Iterable[str] = ()) -> list[FileChange]:
    """What differs between a thread's workspace and the folder it was copied from.

    Files the log says were written are listed even when their content did not change.
    Added and modified first, then deleted, then unchanged; by path within each.
    """
    here = Workspace(root)
    there = Workspace(original) if original is not None and original.is_dir() else None
    wrote = set(written)
    names = set(tree_files(root)) | wrote
    if there is not None:
        names |= set(tree_files(there.root))
    out: list[FileChange] = []
    for rel in names:
        new = _content(here, rel)
        old = _content(there, rel)
        if new is None and old is None:
            continue
        if old is None:
            status = "added"
        elif new is None:
            status = "deleted"
        elif isinstance(new, Unreadable) or isinstance(old, Unreadable):
            status = "modified" if str(new) != str(old) or rel in wrote else "unchanged"
        else:
            status = "unchanged" if new == old else "modified"
        if status == "unchanged" and rel not in wrote:
            continue
        out.append(FileChange(rel, status, rel in wrote))
    order = {"added": 0, "modified": 0, "deleted": 1, "unchanged": 2}
    return sorted(out, key=lambda c: (order[c.status], c.path))


def file_diff(
    root: Path,
    original: Path | None,
    rel: str,
    *,
    max_lines: int = VIEW_DIFF_LINES,
    max_bytes: int = VIEW_DIFF_BYTES,
) -> str:
    """One file of a thread's workspace against the original folder, as a unified diff."""
    new = _content(Workspace(root), rel)
    there = Workspace(original) if original is not None and original.is_dir() else None
    old = _content(there, rel)
    for side in (new, old):
        if isinstance(side, Unreadable):
            return f"(no diff: {side})"
    assert not isinstance(new, Unreadable) and not isinstance(old, Unreadable)
    if new is None and old is None:
        return f"({rel} is in neither folder)"
    diff = unified(rel, old, new, max_lines=max_lines, max_bytes=max_bytes)
    return diff or f"({rel} is the same as in the original workspace)"
