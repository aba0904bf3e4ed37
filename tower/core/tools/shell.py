"""`run_shell`: one command in the workspace, with no stdin, a timeout, an output cap and an
environment stripped of secrets; inside a bubblewrap sandbox where Linux allows it (own PID
and network namespaces, the workspace the only writable place).

The command runs in its own process group, so a timeout or a killed thread takes down
whatever it started too (a test runner's workers, a backgrounded server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tower.core.secrets import hide_from_proc_environ, scrubbed_env
from tower.core.tools.files import ToolError

# After the command exits, output still held open by its children is read this long.
DRAIN_S = 0.5
TAIL_BYTES = 2_000


def shell_env() -> dict[str, str]:
    """The scrubbed environment, with tower's own interpreter first on PATH (as if its
    virtualenv were active), so `python` in a command is the Python tower runs on."""
    env = scrubbed_env()
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    if bindir not in path.split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + path
    return env


# run_shell's sandbox: bubblewrap when it is installed and this kernel lets it make
# namespaces (a container may not). TOWER_SHELL_SANDBOX=0 turns it off.
USE_SANDBOX = os.environ.get("TOWER_SHELL_SANDBOX", "1") != "0"
_bwrap_ok: bool | None = None  # probed once: None = not yet asked


def _bwrap_usable() -> bool:
    """Whether `bwrap` is installed and can build the sandbox here (probed once)."""
    global _bwrap_ok
    if _bwrap_ok is None:
        bwrap = shutil.which("bwrap")
        _bwrap_ok = False
        if bwrap is not None:
            try:
                probe = subprocess.run(
                    [bwrap, *_sandbox_args(Path("/")), "/bin/true"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=10,
                    check=False,
                )
                _bwrap_ok = probe.returncode == 0
            except (OSError, subprocess.SubprocessError):
                _bwrap_ok = False
    return _bwrap_ok


def _sandbox_args(cwd: Path) -> list[str]:
    """Own PID and network namespaces (the command sees neither tower's processes, so no
    /proc/$PPID/environ, nor the network), the system read-only, a private /tmp, and the
    workspace read-write. Tower's interpreter stays reachable when it lives under /tmp."""
    args = [
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--die-with-parent",
        "--ro-bind", "/", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
    ]  # fmt: skip
    for keep in {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parent)}:
        if keep.startswith("/tmp/"):
            args += ["--ro-bind", keep, keep]
    here = str(cwd)
    return [*args, "--bind", here, here, "--chdir", here]


def sandboxed() -> bool:
    """Whether run_shell's commands run inside bubblewrap."""
    return USE_SANDBOX and _bwrap_usable()


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    transport = getattr(proc, "_transport", None)  # asyncio has no public way to do this
    if transport is not None:
        transport.close()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Capped:
    """Keeps the head of the output and its last TAIL_BYTES; counts what fell between."""

    def __init__(self, cap: int) -> None:
        self.cap = max(cap, TAIL_BYTES * 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - TAIL_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > TAIL_BYTES:
                del self.tail[: len(self.tail) - TAIL_BYTES]

    def text(self) -> str:
        cut = self.total - len(self.head) - len(self.tail)
        out = self.head.decode("utf-8", errors="replace")
        if cut > 0:
            out += f"\n[… {cut} bytes of output cut …]\n"
        return out + self.tail.decode("utf-8", errors="replace")


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Returns when the shell itself exits. `proc.wait()` on Python 3.11 also waits for every
    pipe to close, which a backgrounded child holds open (CPython gh-119710); a pidfd turns
    readable at the exit itself."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux, or an old kernel
        await proc.wait()
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _pump(stream: asyncio.StreamReader, out: _Capped) -> None:
    while chunk := await stream.read(65536):
        out.add(chunk)


async def run_shell(
    command: object,
    cwd: Path,
    *,
    timeout_s: float,
    max_output_bytes: int,
    env: dict[str, str] | None = None,
) -> str:
    """Runs `sh -c command`; returns its exit status and (capped) merged output."""
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command must be a non-empty string")
    if "\x00" in command:
        raise ToolError("command contains a NUL byte")
    started = time.monotonic()
    argv = ["/bin/sh", "-c", command]
    if sandboxed():
        argv = [shutil.which("bwrap") or "bwrap", *_sandbox_args(Path(cwd).resolve()), *argv]
    else:
        # No PID namespace: the command can read /proc/$PPID/environ, tower's first
        # environment; blank the secrets there (the values stay in os.environ).
        hide_from_proc_environ()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=shell_env() if env is None else env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    out = _Capped(max_output_bytes)
    reader = asyncio.create_task(_pump(proc.stdout, out))
    timed_out = False
    try:
        try:
            async with asyncio.timeout(timeout_s):
                await _exited(proc)
        except TimeoutError:
            timed_out = True
        if not timed_out:
            # Children may keep the pipe open after the shell exits: read briefly, then stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await asyncio.shield(reader)
    finally:
        _kill_group(proc)
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        try:
            async with asyncio.timeout(DRAIN_S):
                await proc.wait()
        except TimeoutError:
            # A child that left the process group (setsid) holds the pipe open, and on 3.11
            # proc.wait() waits for that too: close our end (the shell is reaped by now).
            _close_pipes(proc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):
                    await proc.wait()
        _close_pipes(proc)  # idempotent; leaves nothing for the garbage collector
    seconds = time.monotonic() - started
    text = out.text()
    if timed_out:
        head = f"timed out after {timeout_s:g} s; the command was stopped"
    else:
        head = f"exit status {proc.returncode} after {seconds:.1f} s"
    return f"{head}\n{text}" if text else f"{head}\n(no output)"
