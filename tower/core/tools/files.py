"""File tools confined to a thread's workspace folder.

Paths are walked one component at a time from an open handle on the workspace, each step
opened with O_NOFOLLOW: a symlink is followed only after its target is checked to stay
inside, and a link swapped in between the check and the use fails to open rather than lead
outside. A refused path is a ToolError whose message goes back to the model as the tool
result: a model that tries `../` gets told no, and the thread goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

MAX_READ_BYTES = 200_000
MAX_WRITE_BYTES = 1_000_000
MAX_LIST = 500
MAX_MATCHES = 200
MAX_SEARCH_FILE_BYTES = 2_000_000
MAX_LINE_CHARS = 240
MAX_SYMLINK_HOPS = 40
REGEX_SEARCH_S = 20.0
# Never listed, searched or written, at any depth.
PROTECTED_DIRS = frozenset({".git", ".tower"})
# tower's own files at the workspace's top: a project folder used in place holds them.
PROTECTED_FILES = frozenset({"tower.toml", "keys.toml", "tower.db", "tower.db-wal", "tower.db-shm"})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Non-blocking, so a named pipe planted in the workspace cannot hang a read.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _is_link_or_gone(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return True


class ToolError(Exception):
    """A tool call that cannot be carried out; the message is for the model."""


class Workspace:
    def __init__(self, root: Path, protected: tuple[Path, ...] = ()) -> None:
        self.root = root.resolve()
        # Extra files outside the name lists (the session database when it lives inside).
        self.protected = tuple(p.resolve() for p in protected)

    # --- path handling ------------------------------------------------------------------

    def _parts(self, rel: Any) -> list[str]:
        """A model-supplied path as components relative to the root, or ToolError."""
        if not isinstance(rel, str):
            raise ToolError("path must be a string")
        if "\x00" in rel:
            raise ToolError("path contains a NUL byte")
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError("path is not valid UTF-8") from None
        if rel.startswith("/"):
            pure = PurePosixPath(rel)
            root = PurePosixPath(self.root)
            # Compared by whole components: /x/proj-evil is not inside /x/proj.
            if pure.parts[: len(root.parts)] != root.parts:
                raise ToolError(f"path {rel!r} is outside the workspace")
            return list(pure.parts[len(root.parts) :])
        return [p for p in rel.split("/") if p not in ("", ".")]

    def _walk(
        self, rel: Any, *, follow_last: bool, create_dirs: bool = False, lenient: bool = False
    ) -> tuple[int, list[str], str]:
        """Opens the folder holding rel's last component: (folder fd, its parts, last name).

        The name is "" when rel is the root itself. Symlinks on the way are resolved by
        hand and must stay inside; `..` may not climb above the root.
        """
        todo = self._parts(rel)
        stack: list[int] = [os.open(self.root, _DIR_FLAGS)]
        names: list[str] = []
        hops = 0
        try:
            while todo:
                part = todo.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if not names:
                        via = " (through a symbolic link)" if hops else ""
                        raise ToolError(f"path {rel!r} is outside the workspace{via}")
                    os.close(stack.pop())
                    names.pop()
                    continue
                last = not todo
                cur = stack[-1]
                try:
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                except FileNotFoundError:
                    if last:
                        return self._keep(stack, names, part)
                    if lenient:  # where it would land: the missing rest, unresolved
                        return self._keep(stack, names, "/".join([part, *todo]))
                    if not create_dirs:
                        raise ToolError(f"no such folder: {'/'.join([*names, part])}") from None
                    if any(n.casefold() in PROTECTED_DIRS for n in (*names, part)):
                        # Checked before creating anything (a link may have led here).
                        hit = next(n for n in (*names, part) if n.casefold() in PROTECTED_DIRS)
                        raise ToolError(f"path {rel!r} is protected ({hit})") from None
                    os.mkdir(part, 0o777, dir_fd=cur)
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode) and (not last or follow_last):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise ToolError(f"path {rel!r} has too many symbolic links")
                    target = os.readlink(part, dir_fd=cur)
                    if target.startswith("/"):
                        try:
                            inner = self._parts(target)
                        except ToolError:
                            raise ToolError(
                                f"path {rel!r} is outside the workspace (through a symbolic link)"
                            ) from None
                        for fd in stack[1:]:
                            os.close(fd)
                        del stack[1:]
                        names.clear()
                        todo = inner + todo
                    else:
                        todo = [p for p in target.split("/") if p] + todo
                    continue
                if last:
                    return self._keep(stack, names, part)
                try:
                    fd = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # swapped for a link since the stat
                        raise ToolError(f"path {rel!r} changed while being opened") from None
                    if exc.errno == errno.ENOTDIR:
                        # Linux says ENOTDIR for O_DIRECTORY|O_NOFOLLOW on a link.
                        now = os.stat(part, dir_fd=cur, follow_symlinks=False)
                        if stat.S_ISLNK(now.st_mode):
                            raise ToolError(f"path {rel!r} changed while being opened") from None
                        raise ToolError(f"not a folder: {'/'.join([*names, part])}") from None
                    raise
                stack.append(fd)
                names.append(part)
            return self._keep(stack, names, "")
        except BaseException:
            for fd in stack:
                os.close(fd)
            raise

    @staticmethod
    def _keep(stack: list[int], names: list[str], name: str) -> tuple[int, list[str], str]:
        for fd in stack[:-1]:
            os.close(fd)
        return stack[-1], list(names), name

    def _check_writable(self, rel: Any, parts: list[str]) -> None:
        """Refuses writes into .git/.tower at any depth and to tower's own files."""
        # casefold: on a case-insensitive file system `.GIT/hooks` is `.git/hooks`.
        for part in parts:
            if part.casefold() in PROTECTED_DIRS:
                raise ToolError(f"path {rel!r} is protected ({part})")
        if len(parts) == 1 and parts[0].casefold() in PROTECTED_FILES:
            raise ToolError(f"path {rel!r} is protected (tower's own file)")
        if self.root.joinpath(*parts) in self.protected:
            raise ToolError(f"path {rel!r} is protected (tower's own file)")

    def resolve(self, rel: Any) -> Path:
        """Where rel lands inside the workspace (for messages and tests), or ToolError."""
        dfd, names, name = self._walk(rel, follow_last=True, lenient=True)
        os.close(dfd)
        return self.root.joinpath(*names, name) if name else self.root.joinpath(*names)

    # --- the tools ----------------------------------------------------------------------

    async def run(self, tool: str, args: dict[str, Any]) -> str:
        if tool == "read_file":
            return await asyncio.to_thread(self._read, args.get("path"))
        if tool == "write_file":
            return await asyncio.to_thread(self._write, args.get("path"), args.get("content"))
        if tool == "list_dir":
            return await asyncio.to_thread(self._list, args.get("path", "."))
        if tool == "search":
            if args.get("regex"):
                return await self._search_apart(args)
            return await asyncio.to_thread(self._search, args)
        raise ToolError(f"unknown tool {tool!r}")

    def _read(self, rel: Any) -> str:
        dfd, _names, name = self._walk(rel, follow_last=True)
        try:
            if not name:
                raise ToolError(f"{rel} is a folder")
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                raise ToolError(f"no such file: {rel}") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ToolError(f"path {rel!r} changed while being opened") from None
                raise
        finally:
            os.close(dfd)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "is a folder" if stat.S_ISDIR(mode) else "is not a regular file"
            raise ToolError(f"no such file: {rel} {what}")
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_READ_BYTES + 1)
        text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
        if len(data) > MAX_READ_BYTES:
            text += f"\n[truncated at {MAX_READ_BYTES} bytes]"
        return text

    def _write(self, rel: Any, content: Any) -> str:
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if len(content.encode()) > MAX_WRITE_BYTES:
            raise ToolError(f"content is larger than {MAX_WRITE_BYTES} bytes")
        self._check_writable(rel, self._parts(rel))  # before any folder is created
        # Folders are created on the way; the file itself is replaced, never written through.
        dfd, names, name = self._walk(rel, follow_last=True, create_dirs=True)
        try:
            if not name:
                raise ToolError(f"{rel} is a folder")
            self._check_writable(rel, [*names, name])  # where links led
            mode = 0o644
            with contextlib.suppress(FileNotFoundError):
                old = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISDIR(old.st_mode):
                    raise ToolError(f"{rel} is a folder")
                if stat.S_ISREG(old.st_mode):
                    mode = stat.S_IMODE(old.st_mode)  # a script stays executable
            tmp = f".{name[:100]}.{secrets.token_hex(4)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
            try:
                os.fchmod(fd, mode)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(content)
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)
        return f"wrote {len(content)} characters to {rel}"

    def _open_dir(self, rel: Any) -> int:
        dfd, _names, name = self._walk(rel or ".", follow_last=True)
        if not name:
            return dfd
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            raise ToolError(f"no such folder: {rel}") from None
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise ToolError(f"not a folder: {rel}") from None
            raise
        finally:
            os.close(dfd)

    def _list(self, rel: Any) -> str:
        fd = self._open_dir(rel)
        try:
            with os.scandir(fd) as it:
                names = sorted(
                    (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
                    for e in it
                    if e.name not in PROTECTED_DIRS
                )
        finally:
            os.close(fd)
        if len(names) > MAX_LIST:
            names = [*names[:MAX_LIST], f"[{len(names) - MAX_LIST} more]"]
        return "\n".join(names) if names else "(empty folder)"

    async def _search_apart(self, args: dict[str, Any]) -> str:
        """A model's regular expression runs in its own process with a time limit: a
        catastrophic pattern (`(a+)+$`) cannot hold one of tower's threads for ever."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tower.core.tools.files",
            str(self.root),
            json.dumps(args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(REGEX_SEARCH_S):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ToolError(
                f"the search took longer than {REGEX_SEARCH_S:g} s; simplify the pattern"
            ) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        reply = json.loads(out or b'{"error": "the search process failed"}')
        if "error" in reply:
            raise ToolError(reply["error"])
        return str(reply["result"])

    def _search(self, args: dict[str, Any]) -> str:
        pattern = args.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("pattern must be a non-empty string")
        flags = re.IGNORECASE if args.get("ignore_case") else 0
        try:
            rx = re.compile(pattern if args.get("regex") else re.escape(pattern), flags)
        except re.error as exc:
            raise ToolError(f"pattern is not a valid regular expression: {exc}") from None
        glob = args.get("glob") or "*"
        if not isinstance(glob, str):
            raise ToolError("glob must be a string")
        base = args.get("path") or "."
        fd = self._open_dir(base)
        prefix = "/".join(self._parts(base)) if base not in (".", "") else ""
        hits: list[str] = []
        files = 0
        try:
            for relpath, data in self._files(fd, prefix, glob):
                files += 1
                for n, line in enumerate(data.split("\n"), 1):
                    line = line.removesuffix("\r")
                    if rx.search(line):
                        shown = line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "…"
                        hits.append(f"{relpath}:{n}: {shown}")
                        if len(hits) > MAX_MATCHES:
                            break
                if len(hits) > MAX_MATCHES:
                    break
        finally:
            os.close(fd)
        if not hits:
            return f"no matches for {pattern!r} in {files} file(s)"
        if len(hits) > MAX_MATCHES:
            return "\n".join(hits[:MAX_MATCHES]) + f"\n[stopped after {MAX_MATCHES} matches]"
        return "\n".join(hits)

    @staticmethod
    def _files(top: int, prefix: str, glob: str) -> Iterator[tuple[str, str]]:
        """Text files under an open folder, never following links, skipping protected dirs."""
        for dirpath, dirnames, filenames, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            # Links to folders are dropped here, so fwalk never even opens them to check.
            dirnames[:] = sorted(
                d for d in dirnames if d not in PROTECTED_DIRS and not _is_link_or_gone(d, dfd)
            )
            for fname in sorted(filenames):
                rel = os.path.normpath(os.path.join(prefix, dirpath, fname))
                if not (fnmatch.fnmatchcase(fname, glob) or fnmatch.fnmatchcase(rel, glob)):
                    continue
                try:
                    fd = os.open(fname, _READ_FLAGS, dir_fd=dfd)
                except OSError:
                    continue  # a link, or gone: skipped
                with os.fdopen(fd, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SEARCH_FILE_BYTES:
                        continue
                    raw = fh.read()
                if b"\x00" in raw[:8192]:
                    continue  # binary
                yield rel, raw.decode("utf-8", errors="replace")


def _search_main(argv: list[str]) -> int:
    """`python -m tower.core.tools.files ROOT ARGS_JSON`: one search, its reply as JSON."""
    try:
        reply = {"result": Workspace(Path(argv[0]))._search(json.loads(argv[1]))}
    except ToolError as exc:
        reply = {"error": str(exc)}
    sys.stdout.write(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(_search_main(sys.argv[1:]))
