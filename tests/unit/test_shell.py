"""run_shell (tower/core/tools/shell.py) and the secret scrubbing it relies on
(tower/core/secrets.py). Processes are watched through pidfds and FIFOs: the tests wait on
the kernel telling them something happened, never on a sleep."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tower.core.secrets import is_secret_name, scrubbed_env, secrets_from_env
from tower.core.tools import ToolError, shell
from tower.core.tools.shell import run_shell

BIG = 1_000_000
CUT = re.compile(r"\n\[… (\d+) bytes of output cut …\]\n")


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    return root.resolve()


async def _run(command: object, cwd: Path, timeout_s: float = 30, cap: int = BIG) -> str:
    return await run_shell(command, cwd, timeout_s=timeout_s, max_output_bytes=cap)


def _split(result: str) -> tuple[str, str]:
    head, _, body = result.partition("\n")
    return head, body


async def _gone(pid: int, within: float = 10.0) -> None:
    """Returns once pid has exited (a zombie counts: it can do nothing any more).

    A pidfd turns readable when its process exits, so this waits on the kernel's word; the
    bound only turns "never" into a failure.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, within)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class _Fifo:
    """A named pipe the command writes to; lines arrive through the event loop."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        # Opened for reading before any writer, without blocking; the command's open for
        # writing then succeeds at once.
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.buf = b""
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        if not chunk:  # the writer closed: wait for the next one
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            asyncio.get_running_loop().add_reader(self.fd, self._readable)
            return
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.put_nowait(line.decode())

    async def line(self, within: float = 10.0) -> str:
        return await asyncio.wait_for(self.lines.get(), within)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.fd)
        os.close(self.fd)


@pytest.fixture
async def fifo(cwd: Path) -> AsyncIterator[_Fifo]:
    pipe = _Fifo(cwd / "ready")
    yield pipe
    pipe.close()


# --- status, output, cwd, stdin -----------------------------------------------------------


async def test_exit_status_and_merged_output(cwd: Path) -> None:
    head, body = _split(await _run("echo out; echo err >&2; echo again; exit 3", cwd))
    assert head.startswith("exit status 3 after ")
    assert head.endswith(" s")
    assert body == "out\nerr\nagain\n"


async def test_success_and_no_output(cwd: Path) -> None:
    head, body = _split(await _run("true", cwd))
    assert head.startswith("exit status 0 ")
    assert body == "(no output)"


async def test_a_failing_command_reports_its_status_and_message(cwd: Path) -> None:
    head, body = _split(await _run("ls no-such-file", cwd))
    assert not head.startswith("exit status 0 ")
    assert re.match(r"exit status \d+ ", head)
    assert "no-such-file" in body


async def test_runs_in_the_workspace(cwd: Path) -> None:
    (cwd / "marker.txt").write_text("found me")
    _head, body = _split(await _run("pwd -P; cat marker.txt; echo made > made.txt", cwd))
    assert body.splitlines() == [str(cwd), "found me"]
    assert (cwd / "made.txt").read_text() == "made\n"


async def test_stdin_is_empty(cwd: Path) -> None:
    # With a terminal or an inherited pipe `cat` would wait for input; here it ends at once.
    head, body = _split(await _run("cat; read line; echo read-status=$?", cwd))
    assert head.startswith("exit status 0 ")
    assert body == "read-status=1\n"


@pytest.mark.parametrize("bad", ["", "   ", "\n", None, 5, ["ls"]])
async def test_command_must_be_a_non_empty_string(cwd: Path, bad: object) -> None:
    with pytest.raises(ToolError, match="command must be a non-empty string"):
        await _run(bad, cwd)


async def test_nul_byte_in_the_command_is_refused(cwd: Path) -> None:
    with pytest.raises(ToolError, match="NUL"):
        await _run("echo a\x00 > pwned.txt", cwd)
    assert not (cwd / "pwned.txt").exists()


# --- the output cap -----------------------------------------------------------------------


async def test_output_cap_keeps_head_and_tail_and_says_how_much_was_cut(cwd: Path) -> None:
    cap = 10_000
    expected = "".join(f"{i}\n" for i in range(1, 50_001))
    head, body = _split(await _run("seq 1 50000", cwd, cap=cap))
    assert head.startswith("exit status 0 ")
    match = CUT.search(body)
    assert match is not None, body[:200]
    kept_head, kept_tail = body[: match.start()], body[match.end() :]
    assert kept_head and kept_tail
    assert expected.startswith(kept_head)
    assert expected.endswith(kept_tail)
    assert int(match.group(1)) == len(expected) - len(kept_head) - len(kept_tail)
    assert len(kept_head) + len(kept_tail) <= cap
    assert kept_tail.endswith("50000\n")


async def test_output_under_the_cap_is_whole(cwd: Path) -> None:
    expected = "".join(f"{i}\n" for i in range(1, 1001))
    assert len(expected) < 10_000
    _head, body = _split(await _run("seq 1 1000", cwd, cap=10_000))
    assert body == expected
    assert "cut" not in body


# --- stopping the command and everything it started ----------------------------------------


@pytest.fixture
def host_pids(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests watch the command's PIDs from outside; inside bubblewrap's PID namespace
    `$$` and `$!` are the namespace's own numbers. (tests/unit/test_secrets_hostile.py checks the
    same kills under the sandbox by scanning the host's /proc.)"""
    monkeypatch.setattr(shell, "USE_SANDBOX", False)


async def test_timeout_stops_the_command_and_its_children(cwd: Path, host_pids: None) -> None:
    command = (
        "sh -c 'sleep 600 & echo $! > grandchild.pid; echo $$ > child.pid; wait' & "
        "echo started; wait; echo never > finished.txt"
    )
    result = await _run(command, cwd, timeout_s=2)
    head, body = _split(result)
    assert head == "timed out after 2 s; the command was stopped"
    assert body == "started\n"  # what came before the timeout is kept
    for name in ("child.pid", "grandchild.pid"):
        pid = int((cwd / name).read_text())
        await _gone(pid)  # a 600 s sleep ending now was killed
    assert not (cwd / "finished.txt").exists()


async def test_a_background_child_does_not_outlive_the_command(cwd: Path, host_pids: None) -> None:
    # The shell exits at once, leaving a child that holds the output pipe open: the call must
    # report the shell's exit status (not a timeout) and take the child down with it.
    head, _body = _split(await _run("sleep 600 & echo $! > child.pid", cwd, timeout_s=10))
    assert head.startswith("exit status 0 "), head
    await _gone(int((cwd / "child.pid").read_text()))


async def test_cancelling_the_call_kills_the_process_group(
    cwd: Path, fifo: _Fifo, host_pids: None
) -> None:
    task = asyncio.create_task(
        _run("sleep 600 & echo $$ $! > ready; wait; echo never > finished.txt", cwd)
    )
    shell_pid, child_pid = (int(p) for p in (await fifo.line()).split())
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _gone(shell_pid)
    await _gone(child_pid)
    assert not (cwd / "finished.txt").exists()


def _exited(pid: int) -> bool:
    """Whether pid has exited, asked of the kernel without waiting."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    finally:
        os.close(fd)


async def test_the_kill_checks_can_tell_a_live_process(
    cwd: Path, fifo: _Fifo, host_pids: None
) -> None:
    # The kill tests would prove nothing if a running process already looked gone.
    task = asyncio.create_task(_run("sleep 600 & echo $! > ready; wait", cwd))
    try:
        pid = int(await fifo.line())
        assert not _exited(pid)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await _gone(pid)
    assert _exited(pid)


# --- the environment ------------------------------------------------------------------------

PLANTED = {
    "OPENAI_API_KEY": "sk-planted-openai-0123456789abcdef",
    "MY_SECRET": "planted-my-secret-value",
    "GITHUB_PAT": "planted-github-pat-value",
    "DB_PASSWORD": "planted-db-password-value",
    "SLACK_BOT_TOKEN": "planted-slack-token-value",
    "gcp_credentials": "planted-lowercase-credentials",
    "BASIC_AUTH": "planted-basic-auth-value",
    "SSH_PRIVATE_KEY_PATH": "planted-private-key-path",
    "GPG_PASSPHRASE": "planted-passphrase-value",
    "DB_PASSWD": "planted-passwd-value",
}


async def test_secrets_are_scrubbed_from_the_environment(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in PLANTED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TOWER_HARMLESS_SETTING", "plainly-visible-value")
    _head, body = _split(await _run("env", cwd))
    for name, value in PLANTED.items():
        assert f"{name}=" not in body
        assert value not in body
    assert "TOWER_HARMLESS_SETTING=plainly-visible-value" in body.splitlines()
    assert any(line.startswith("PATH=") for line in body.splitlines())


async def test_python_in_a_command_is_towers_interpreter(
    cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Even with a PATH that does not name tower's virtualenv at all.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    _head, body = _split(await _run("python -c 'import sys; print(sys.prefix)'", cwd))
    assert body == sys.prefix + "\n"


def test_secret_names() -> None:
    for name in [*PLANTED, "CLARIFAI_PAT", "AZURE_AD_TOKEN_PROVIDER", "VERTEXAI_CREDENTIALS"]:
        assert is_secret_name(name), name
    for name in ("PATH", "HOME", "LANG", "COMPAT", "PATTERN", "TOWER_HARMLESS_SETTING"):
        assert not is_secret_name(name), name


def test_scrubbed_env_keeps_everything_else() -> None:
    env = {"PATH": "/bin", "OPENAI_API_KEY": "sk-x", "HOME": "/root", "MY_TOKEN": "t"}
    assert scrubbed_env(env) == {"PATH": "/bin", "HOME": "/root"}
    assert env["OPENAI_API_KEY"] == "sk-x"  # the given mapping is not changed


def test_secrets_from_env_longest_value_first_and_short_ones_skipped() -> None:
    env = {
        "A_KEY": "short",
        "B_TOKEN": "a-medium-secret",
        "C_SECRET": "a-much-longer-secret-value",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    found = secrets_from_env(env)
    assert list(found) == ["a-much-longer-secret-value", "a-medium-secret"]
    assert found["a-medium-secret"] == "B_TOKEN"
