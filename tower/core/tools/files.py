"""File tools confined to a thread's workspace folder.

A refused path is a ToolError whose message goes back to the model as the tool result: a
model that tries `../` gets told no, the thread goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

MAX_READ_BYTES = 200_000
MAX_WRITE_BYTES = 1_000_000
MAX_LIST = 500
_PROTECTED = {".git", ".tower"}


class ToolError(Exception):
    """A tool call that cannot be carried out; the message is for the model."""


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, rel: Any, *, for_write: bool = False) -> Path:
        """Maps a model-supplied path into the workspace, or raises ToolError."""
        if not isinstance(rel, str):
            raise ToolError("path must be a string")
        if "\x00" in rel:
            raise ToolError("path contains a NUL byte")
        full = (self.root / rel).resolve()  # an absolute rel replaces the root here
        if full != self.root and self.root not in full.parents:
            raise ToolError(f"path {rel!r} is outside the workspace")
        if for_write:
            parts = full.relative_to(self.root).parts
            if parts and parts[0] in _PROTECTED:
                raise ToolError(f"path {rel!r} is protected ({parts[0]})")
        return full

    async def run(self, tool: str, args: dict[str, Any]) -> str:
        if tool == "read_file":
            return await asyncio.to_thread(self._read, args.get("path"))
        if tool == "write_file":
            return await asyncio.to_thread(self._write, args.get("path"), args.get("content"))
        if tool == "list_dir":
            return await asyncio.to_thread(self._list, args.get("path", "."))
        raise ToolError(f"unknown tool {tool!r}")

    def _read(self, rel: Any) -> str:
        path = self.resolve(rel)
        if not path.is_file():
            raise ToolError(f"no such file: {rel}")
        data = path.read_bytes()[: MAX_READ_BYTES + 1]
        text = data[:MAX_READ_BYTES].decode("utf-8", errors="replace")
        if len(data) > MAX_READ_BYTES:
            text += f"\n[truncated at {MAX_READ_BYTES} bytes]"
        return text

    def _write(self, rel: Any, content: Any) -> str:
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if len(content.encode()) > MAX_WRITE_BYTES:
            raise ToolError(f"content is larger than {MAX_WRITE_BYTES} bytes")
        path = self.resolve(rel, for_write=True)
        if path.is_dir():
            raise ToolError(f"{rel} is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh, exclusively created temp file: a planted symlink cannot redirect the write.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return f"wrote {len(content)} characters to {rel}"

    def _list(self, rel: Any) -> str:
        path = self.resolve(rel or ".")
        if not path.is_dir():
            raise ToolError(f"no such folder: {rel}")
        names = sorted(
            (p.name + "/" if p.is_dir() else p.name)
            for p in path.iterdir()
            if p.name not in _PROTECTED
        )
        if len(names) > MAX_LIST:
            names = [*names[:MAX_LIST], f"[{len(names) - MAX_LIST} more]"]
        return "\n".join(names) if names else "(empty folder)"
