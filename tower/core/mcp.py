"""MCP servers: started once per session, their tools offered to the agents that name them.

Each server lives in one owner task (anyio's cancel scopes must be left in the task that
entered them). A server that dies is restarted with backoff; a call in flight gets an error
result at once instead of hanging, and every call has a timeout. A server's stderr goes to
its own log file, never to the terminal the TUI draws on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tower.core import payloads as pl
from tower.core.project import MCP_SEP, McpServerSettings, Project
from tower.core.secrets import scrubbed_env
from tower.core.tools.files import ToolError

if TYPE_CHECKING:
    from tower.core.bus import Bus

log = logging.getLogger("tower.mcp")

MAX_RESULT_CHARS = 100_000
# What OpenAI and Anthropic accept as a function name; other tools are not offered.
_NAME_OK = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Restarts stop after this many crashes within CRASH_WINDOW_S.
MAX_CRASHES = 5
CRASH_WINDOW_S = 60.0


class McpStartError(Exception):
    """A configured server that did not come up; the message names it and why."""


def log_dir() -> Path:
    """Where server stderr goes: TOWER_LOG_DIR, else the user log folder."""
    env = os.environ.get("TOWER_LOG_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_log_dir("tower", appauthor=False))


def fill(text: str, root: Path) -> str:
    """Fills `{python}` (this interpreter) and `{project}` (the project folder)."""
    return text.replace("{python}", sys.executable).replace("{project}", str(root))


def server_cwd(server: McpServerSettings, root: Path) -> Path:
    """Where a server runs: its `cwd` (relative to the project folder), else that folder."""
    return root / fill(server.cwd, root) if server.cwd else root


def command_problems(project: Project) -> list[str]:
    """Servers whose command cannot be found: caught by `tower check` before any start."""
    problems = []
    for i, server in enumerate(project.mcp_servers):
        cmd = fill(server.command, project.root)
        cwd = server_cwd(server, project.root)
        found = (cwd / cmd).is_file() if "/" in cmd and not cmd.startswith("/") else None
        if found is None:
            found = shutil.which(cmd) is not None
        if not found:
            problems.append(f"mcp_servers[{i}].command: command not found: {cmd!r}")
        if server.cwd and not cwd.is_dir():
            problems.append(f"mcp_servers[{i}].cwd: no such folder: {server.cwd!r}")
    return problems


def _leaf(exc: BaseException) -> BaseException:
    """anyio wraps whatever ends a task group in nested groups; the cause is inside."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _find_child(marker: str) -> int | None:
    """The pid of our child process started with TOWER_MCP_ID=marker (Linux /proc)."""
    me, needle = os.getpid(), f"TOWER_MCP_ID={marker}".encode()
    with contextlib.suppress(OSError):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as fh:
                    ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
                if ppid != me:
                    continue
                with open(f"/proc/{d}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        return int(d)
            except (OSError, ValueError, IndexError):
                continue
    return None


def result_text(result: Any) -> str:
    """A CallToolResult as text: its text parts, else its structured content as JSON."""
    from mcp import types

    parts = []
    for item in result.content or []:
        if isinstance(item, types.TextContent):
            parts.append(item.text)
        else:
            parts.append(f"[{item.type} content]")
    text = "\n".join(parts)
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content, ensure_ascii=False)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"\n[truncated at {MAX_RESULT_CHARS} characters]"
    return text


class _EofWatch:
    """Wraps the read stream so the owner learns within milliseconds that stdout closed."""

    def __init__(self, inner: Any, eof: Any) -> None:
        self._inner, self._eof = inner, eof

    async def receive(self) -> Any:
        import anyio

        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._eof.set()
            raise

    def __aiter__(self) -> _EofWatch:
        return self

    async def __anext__(self) -> Any:
        import anyio

        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _EofWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class McpServer:
    """One configured server: its process, session, tools, and restarts."""

    def __init__(self, settings: McpServerSettings, project: Project, bus: Bus, logs: Path):
        self.settings = settings
        self.name = settings.name
        self.bus = bus
        self.log_path = logs / f"mcp-{settings.name}.log"
        self.tools: list[Any] = []
        self.session: Any = None
        self.pid: int | None = None
        self.error: str = ""
        self.failed = False
        self._root = project.root
        self._up = asyncio.Event()
        self._stop = asyncio.Event()
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._crashes: list[float] = []
        self._errlog: TextIO | None = None

    def _params(self, marker: str) -> Any:
        from mcp import StdioServerParameters

        s = self.settings
        env = scrubbed_env()
        for key, value in s.env.items():  # ${VAR} passes one of our variables on deliberately
            env[key] = os.path.expandvars(fill(value, self._root))
        env["TOWER_MCP_ID"] = marker
        return StdioServerParameters(
            command=fill(s.command, self._root),
            args=[fill(a, self._root) for a in s.args],
            env=env,
            cwd=str(server_cwd(s, self._root)),
        )

    async def start(self) -> None:
        """Starts the owner task and waits for the first start to succeed or fail."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._errlog = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - owned here
        self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")
        await self._first.wait()
        if self.session is None:
            raise McpStartError(f"MCP server {self.name!r} did not start: {self.error}")

    async def _supervise(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            died = await self._run_once()
            self._first.set()
            if not died or self._stop.is_set():
                break
            now = time.monotonic()
            self._crashes = [t for t in self._crashes if now - t < CRASH_WINDOW_S] + [now]
            self._emit("crashed", self.error)
            if len(self._crashes) >= MAX_CRASHES:
                self.failed = True
                self._emit("failed", f"crashed {MAX_CRASHES} times in {CRASH_WINDOW_S:g} s")
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop.wait()
            backoff = min(backoff * 2, 10.0)
        self._first.set()

    async def _run_once(self) -> bool:
        """Runs the server until it is stopped (False) or dies (True)."""
        import anyio
        from mcp import ClientSession, stdio_client, types

        marker = os.urandom(8).hex()
        eof = anyio.Event()
        restarted = self._first.is_set()
        errlog = self._errlog
        assert errlog is not None, "start() opens the server's log before the first run"
        try:
            async with stdio_client(self._params(marker), errlog=errlog) as (read, write):
                self.pid = _find_child(marker)
                async with ClientSession(_EofWatch(read, eof), write) as session:
                    with anyio.fail_after(self.settings.startup_timeout_s):
                        await session.initialize()
                        tools: list[Any] = []
                        cursor = None
                        while True:
                            page = await session.list_tools(
                                params=types.PaginatedRequestParams(cursor=cursor)
                                if cursor
                                else None
                            )
                            tools += page.tools
                            cursor = page.next_cursor
                            if not cursor:
                                break
                    self.tools = tools
                    self.session = session
                    self.error = ""
                    self._up.set()
                    self._emit(
                        "restarted" if restarted else "ready",
                        f"pid {self.pid}",
                        tools=[self.prefixed(t.name) for t in tools],
                    )
                    self._first.set()
                    async with anyio.create_task_group() as tg:

                        async def watch(ev: Any) -> None:
                            await ev.wait()
                            tg.cancel_scope.cancel()

                        tg.start_soon(watch, self._stop)
                        tg.start_soon(watch, eof)
                    if eof.is_set() and not self._stop.is_set():
                        self.error = f"the server process exited{self._last_words()}"
                        return True
                    return False
        except Exception as exc:
            cause = _leaf(exc)
            cwd = server_cwd(self.settings, self._root)
            if isinstance(cause, FileNotFoundError) and not cwd.is_dir():
                self.error = f"cwd is not a folder: {cwd}"
            elif isinstance(cause, FileNotFoundError):
                self.error = f"command not found: {fill(self.settings.command, self._root)}"
            elif isinstance(cause, TimeoutError):
                self.error = f"no answer within {self.settings.startup_timeout_s:g} s"
            else:
                self.error = f"the server process exited{self._last_words()}"
            log.info("MCP server %s: %s (%r)", self.name, self.error, cause)
            return not self._stop.is_set() and self._first.is_set()
        finally:
            self.session = None
            self._up.clear()

    def _last_words(self) -> str:
        """The last line the server wrote to stderr, to say why it stopped."""
        with contextlib.suppress(OSError):
            if self._errlog is not None:
                self._errlog.flush()
            with open(self.log_path, "rb") as fh:
                fh.seek(max(fh.seek(0, 2) - 4000, 0))
                lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines()]
            lines = [ln for ln in lines if ln]
            if lines:
                return f" ({lines[-1][:200]}; log: {self.log_path})"
        return f" (log: {self.log_path})"

    def _emit(self, status: str, detail: str = "", **extra: Any) -> None:
        self.bus.emit(pl.McpServer.of(server=self.name, status=status, detail=detail, **extra))

    def prefixed(self, tool: str) -> str:
        return f"{self.name}{MCP_SEP}{tool}"

    async def call(self, tool: str, args: dict[str, Any]) -> str:
        from mcp import MCPError

        if self.failed:
            raise ToolError(f"MCP server {self.name!r} keeps crashing and was stopped")
        if self.session is None:
            try:
                async with asyncio.timeout(self.settings.startup_timeout_s):
                    await self._up.wait()
            except TimeoutError:
                raise ToolError(
                    f"MCP server {self.name!r} is not running ({self.error or 'restarting'})"
                ) from None
        session = self.session
        if session is None:
            raise ToolError(f"MCP server {self.name!r} is not running ({self.error})")
        try:
            result = await session.call_tool(
                tool, args, read_timeout_seconds=self.settings.call_timeout_s
            )
        except MCPError as exc:
            code = getattr(getattr(exc, "error", None), "code", None)
            if code == -32001:
                raise ToolError(
                    f"MCP server {self.name!r} did not answer {tool} within "
                    f"{self.settings.call_timeout_s:g} s"
                ) from None
            if code == -32000:
                raise ToolError(
                    f"MCP server {self.name!r} stopped during the call (it is being restarted; "
                    "the call may or may not have taken effect)"
                ) from None
            raise ToolError(f"MCP server {self.name!r}: {exc}") from None
        except RuntimeError as exc:  # e.g. structured output that breaks its own schema
            raise ToolError(f"MCP server {self.name!r}: {exc}") from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"{tool} failed")
        return text

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)
        if self._errlog is not None:
            self._errlog.close()


class McpHub:
    """All of a session's servers, and the tool names agents see."""

    def __init__(self, project: Project, bus: Bus, logs: Path | None = None) -> None:
        folder = logs or log_dir()
        self.servers = {s.name: McpServer(s, project, bus, folder) for s in project.mcp_servers}

    async def start(self) -> None:
        """Starts every server at once; raises McpStartError naming each that failed."""
        results = await asyncio.gather(
            *(s.start() for s in self.servers.values()), return_exceptions=True
        )
        problems = [str(r) for r in results if isinstance(r, BaseException)]
        if problems:
            await self.close()
            raise McpStartError("; ".join(problems))

    def schemas(self, names: list[str]) -> list[dict[str, Any]]:
        out = []
        for name in names:
            server = self.servers.get(name)
            if server is None:
                continue
            for tool in server.tools:
                full = server.prefixed(tool.name)
                if not _NAME_OK.match(full):
                    continue  # a provider would refuse every call that offered it
                desc = (tool.description or "").strip()[:1000]
                out.append(
                    {
                        "type": "function",
                        "function": {
                            "name": full,
                            "description": f"{desc} (MCP server {name})".strip(),
                            "parameters": tool.input_schema or {"type": "object", "properties": {}},
                        },
                    }
                )
        return out

    def names(self, servers: list[str]) -> list[str]:
        return [s["function"]["name"] for s in self.schemas(servers)]

    def has(self, full: str) -> bool:
        server, _, tool = full.partition(MCP_SEP)
        found = self.servers.get(server)
        return (
            found is not None
            and bool(_NAME_OK.match(full))
            and any(t.name == tool for t in found.tools)
        )

    async def call(self, full: str, args: dict[str, Any]) -> str:
        server, _, tool = full.partition(MCP_SEP)
        found = self.servers.get(server)
        if found is None:
            raise ToolError(f"no MCP server named {server!r}")
        return await found.call(tool, args)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.servers.values()))
