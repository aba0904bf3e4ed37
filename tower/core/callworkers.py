"""Model calls in worker processes: litellm's work on every core, the ledger in one place.

Nearly all of a model call's CPU is litellm's (its set-up, its stream wrapper, one response
object per chunk; see docs/scaling.md), and one Python process runs on one core. So the
service hands each call, once it is admitted and its reservation is booked, to one of N
worker processes (`python -m tower.core.callworkers`), which runs the very same
`llm.stream_call` and sends back the streamed text and the result.

What stays in the service, and why a cap still cannot be overshot: the call gate, the rate
limits, the reservation (before the call is sent), the settlement (from the result), the
bus and the log. A worker only ever sees a call that is already paid for in the ledger; it
holds no money and writes nothing.

The protocol is JSON lines over the worker's stdin and stdout:

    service -> worker   {"op": "setup", "registration": {...}}   prices, sim profiles, tokenizers
                        {"op": "call", "id": 7, "model": ..., "messages": [...], ...}
                        {"op": "cancel", "id": 7}                 the thread was paused or killed
    worker -> service   {"id": 7, "text": "..."}                  streamed text, coalesced
                        {"id": 7, "result": {...}}                a CallResult's fields
                        {"id": 7, "error": {...}}                 a CallError's fields
                        {"lag": 0.012}                            the worker's loop lag

A worker that dies takes its calls with it: each one fails with `llm.CallLost`, which the agent
books at its reservation ("possibly billed", as a crash would) before trying again. The pool
starts a new worker in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from tower.core import llm
from tower.core.admission import LoopLag

log = logging.getLogger("tower.workers")

MAX_LINE = 64 * 1024 * 1024  # a long conversation is one line
FLUSH_S = 0.05  # a worker sends a call's streamed text at most this often
AUTO_MIN_CONCURRENT = 64  # `workers = "auto"`: fewer threads at once do not need them
RESTARTS_PER_MINUTE = 5  # a worker that keeps dying is not started again and again


def _line(msg: dict[str, Any]) -> bytes:
    """One protocol message, as both sides write it (the newline is added by the writer)."""
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(setting: int | str, max_concurrent: int, cores: int | None = None) -> int:
    """How many worker processes a session starts. `"auto"`: one per core, once the project
    may have enough calls in flight to need more than one core (AUTO_MIN_CONCURRENT); a
    worker costs seconds of start-up and ~200 MB (its own litellm), so a small project makes
    its few calls in-process. 0: every call in the service's process."""
    if setting == "auto":
        cores = usable_cores() if cores is None else cores
        return cores if cores > 1 and max_concurrent >= AUTO_MIN_CONCURRENT else 0
    return max(int(setting), 0)


@dataclass
class _Pending:
    future: asyncio.Future[llm.CallResult]
    on_text: Callable[[str], None]


@dataclass
class _Worker:
    n: int
    proc: asyncio.subprocess.Process
    pending: dict[int, _Pending] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None
    errors: asyncio.Task[None] | None = None
    ready: bool = False  # litellm loaded and the setup applied: calls may be sent
    answered: int = 0
    lag_s: float = 0.0


class WorkerPool:
    """N worker processes; a call goes to the one with the fewest calls in flight."""

    def __init__(
        self, size: int, registration: dict[str, Any], command: list[str] | None = None
    ) -> None:
        self.size = size
        self.command = command or [sys.executable, "-m", "tower.core.callworkers"]
        self.registration = registration
        self.workers: list[_Worker | None] = [None] * size
        self.lost = 0  # calls a dead worker took with it
        self.restarts: list[float] = []
        self.closed = False
        self.broken: str | None = None  # why the pool gave up starting workers
        self._ids = itertools.count(1)
        self._all_ready = asyncio.Event()

    @property
    def ready(self) -> int:
        """Workers that take calls now."""
        return sum(1 for w in self.workers if w is not None and w.ready)

    @property
    def lag_s(self) -> float:
        """The worst loop lag a worker reported: how far behind the busiest worker runs."""
        return max((w.lag_s for w in self.workers if w is not None), default=0.0)

    async def start(self) -> None:
        for n in range(self.size):
            self.workers[n] = await self._spawn(n)

    async def wait_ready(self) -> None:
        """Until every worker takes calls (litellm loaded in each: seconds)."""
        await self._all_ready.wait()

    async def _spawn(self, n: int) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_LINE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        w = _Worker(n, proc)
        self._send(w, {"op": "setup", "registration": self.registration})
        w.reader = asyncio.get_running_loop().create_task(self._read(w), name=f"tower:worker{n}")
        w.errors = asyncio.get_running_loop().create_task(
            self._drain_stderr(w), name=f"tower:worker{n}:stderr"
        )
        return w

    def _send(self, w: _Worker, msg: dict[str, Any]) -> None:
        assert w.proc.stdin is not None
        w.proc.stdin.write(_line(msg) + b"\n")

    def _pick(self) -> _Worker | None:
        best: _Worker | None = None
        for w in self.workers:
            if w is None or not w.ready or w.proc.stdin is None:
                continue
            if w.proc.stdin.is_closing():
                continue
            if best is None or len(w.pending) < len(best.pending):
                best = w
        return best

    async def stream_call(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        max_tokens: int,
        timeout_s: float,
        on_text: Callable[[str], None],
        metadata: dict[str, Any] | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        lag: LoopLag | None = None,
        tokenizer: Any = None,
        prompt_cache: bool = True,
        temperature: float | None = None,
    ) -> llm.CallResult:
        """`llm.stream_call` in a worker. The worker keeps the call's timeout (in provider
        time, by its own loop's lag); the service waits a bounded while longer, so a worker
        that hangs without dying cannot hold a thread for ever. With no worker ready (they
        are still loading litellm, the pool gave up, or it is stopping) the call is made in
        this process (`lag`, `tokenizer`: for that), so a session never waits for them."""
        w = self._pick()
        if w is None:
            return await llm.stream_call(
                model,
                messages,
                tools,
                max_tokens,
                timeout_s,
                on_text,
                metadata,
                api_base=api_base,
                api_key=api_key,
                lag=lag,
                tokenizer=tokenizer,
                prompt_cache=prompt_cache,
                temperature=temperature,
            )
        call_id = next(self._ids)
        fut: asyncio.Future[llm.CallResult] = asyncio.get_running_loop().create_future()
        w.pending[call_id] = _Pending(fut, on_text)
        msg: dict[str, Any] = {
            "op": "call",
            "id": call_id,
            "model": model,
            "messages": messages,
            "tools": tools,
            "max_tokens": max_tokens,
            "timeout_s": timeout_s,
            "metadata": metadata,
        }
        if api_base:
            msg["api_base"] = api_base
        if api_key:
            msg["api_key"] = api_key  # over a pipe to a child process: never logged
        if not prompt_cache:
            msg["prompt_cache"] = False
        if temperature is not None:
            msg["temperature"] = temperature
        try:
            self._send(w, msg)
            async with asyncio.timeout(timeout_s * 5 + 30):
                return await fut
        except TimeoutError:
            raise llm.CallError(
                f"{model}: worker {w.n} gave no answer within the call timeout", retryable=True
            ) from None
        finally:
            if w.pending.pop(call_id, None) is not None and not fut.done():
                # Cancelled (the thread paused or was killed) or timed out: the worker stops it.
                with contextlib.suppress(Exception):
                    self._send(w, {"op": "cancel", "id": call_id})

    async def _read(self, w: _Worker) -> None:
        assert w.proc.stdout is not None
        out = w.proc.stdout
        try:
            while True:
                try:
                    line = await out.readline()
                except ValueError:  # a line past MAX_LINE: the worker is broken
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    break
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    log.warning("worker %d wrote a line that is not JSON: %.200r", w.n, line)
                    continue
                try:
                    self._receive(w, msg)
                except Exception as exc:  # an answer of the wrong shape fails its call alone
                    log.warning("worker %d sent a malformed message: %s", w.n, exc)
                    call_id = msg.get("id") if isinstance(msg, dict) else None
                    p = w.pending.get(call_id) if isinstance(call_id, int) else None
                    if p is not None and not p.future.done():
                        why = f"worker {w.n} sent a malformed answer ({type(exc).__name__})"
                        p.future.set_exception(llm.CallError(why, retryable=True))
        finally:
            await self._died(w)

    def _receive(self, w: _Worker, msg: dict[str, Any]) -> None:
        if "lag" in msg:
            w.lag_s = float(msg["lag"])
        if msg.get("ready"):
            w.ready = True
            if self.ready == self.size:
                self._all_ready.set()
        call_id = msg.get("id")
        if call_id is None:
            return
        p = w.pending.get(call_id)
        if p is None or p.future.done():
            return  # a call cancelled meanwhile: its late answer is dropped
        text = msg.get("text")
        if text:
            p.on_text(text)
        if "result" in msg:
            r = msg["result"]
            r["tool_calls"] = [llm.ToolCall(**tc) for tc in r.get("tool_calls") or ()]
            w.answered += 1
            p.future.set_result(llm.CallResult(**r))
        elif "error" in msg:
            e = msg["error"]
            w.answered += 1
            p.future.set_exception(
                llm.CallError(
                    e["message"],
                    bool(e.get("retryable")),
                    context_window=bool(e.get("context_window")),
                    retry_after=e.get("retry_after"),
                )
            )

    async def _drain_stderr(self, w: _Worker) -> None:
        """A worker's stderr goes to tower's log, never onto the screen."""
        assert w.proc.stderr is not None
        with contextlib.suppress(Exception):
            while line := await w.proc.stderr.readline():
                log.warning("worker %d: %s", w.n, line.decode(errors="replace").rstrip()[:500])

    async def _died(self, w: _Worker) -> None:
        """Its calls are lost (possibly billed); a new worker takes its place, unless workers
        keep dying (then the pool is broken and the session makes its calls in-process)."""
        code = await w.proc.wait()
        w.ready = False
        self._all_ready.clear()
        lost = [p for p in w.pending.values() if not p.future.done()]
        w.pending.clear()
        why = f"worker process {w.n} exited ({code}) during this call: possibly billed"
        for p in lost:
            p.future.set_exception(llm.CallLost(why))
        self.lost += len(lost)
        if self.closed or self.workers[w.n] is not w:
            return
        log.warning("worker %d exited with %s; %d call(s) lost", w.n, code, len(lost))
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < 60.0] + [now]
        if len(self.restarts) > RESTARTS_PER_MINUTE:
            self.broken = f"worker processes exited {len(self.restarts)} times within a minute"
            self.workers[w.n] = None
            log.error("%s: calls run in the service's process from now on", self.broken)
            return
        try:
            self.workers[w.n] = await self._spawn(w.n)
        except OSError as exc:
            self.workers[w.n] = None
            self.broken = f"cannot start a worker process: {exc}"

    async def stop(self) -> None:
        """Ends every worker (closing its stdin ends it; a stuck one is killed). A worker
        started in place of a dead one while this runs is ended too."""
        self.closed = True
        stopped: set[int] = set()
        while workers := [w for w in self.workers if w is not None and id(w) not in stopped]:
            for w in workers:
                if w.proc.stdin is not None:
                    with contextlib.suppress(Exception):
                        w.proc.stdin.close()
            for w in workers:
                try:
                    async with asyncio.timeout(5):
                        await w.proc.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    await w.proc.wait()
                for task in (w.reader, w.errors):  # the reader ends in _died: no restart now
                    if task is not None:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                stopped.add(id(w))


# --- the worker process --------------------------------------------------------------------


def apply_registration(reg: dict[str, Any]) -> dict[str, Any]:
    """Tells this process's litellm what the service's knows (`Models.registration`);
    returns the tokenizers it loaded, by model."""
    from tower.core.models import register_with_litellm

    register_with_litellm(reg)
    tokenizers: dict[str, Any] = {}
    for model, path in (reg.get("tokenizers") or {}).items():
        try:
            tokenizers[model] = llm.load_tokenizer(path)
        except ValueError as exc:
            log.warning("tokenizer for %s: %s", model, exc)
    return tokenizers


class _Serve:
    """The worker's side: one task per call, its text and answer written back as lines."""

    def __init__(self, wire: BinaryIO) -> None:
        self.wire = wire  # the protocol's own stdout; print() goes to stderr
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.text: dict[int, list[str]] = {}
        self.out: list[bytes] = []
        self.tokenizers: dict[str, Any] = {}
        self.lag: LoopLag | None = None
        self._flush_due = False

    def put(self, msg: dict[str, Any]) -> None:
        self.out.append(_line(msg))
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """One write for everything this turn of the loop produced."""
        self._flush_due = False
        if self.out:
            data, self.out = b"\n".join(self.out) + b"\n", []
            self.wire.write(data)
            self.wire.flush()

    async def call(self, msg: dict[str, Any]) -> None:
        call_id = msg["id"]
        buf = self.text.setdefault(call_id, [])
        try:
            result = await llm.stream_call(
                msg["model"],
                msg["messages"],
                msg.get("tools"),
                msg["max_tokens"],
                msg["timeout_s"],
                buf.append,
                msg.get("metadata"),
                api_base=msg.get("api_base"),
                api_key=msg.get("api_key"),
                lag=self.lag,
                tokenizer=self.tokenizers.get(msg["model"]),
                prompt_cache=msg.get("prompt_cache", True),
                temperature=msg.get("temperature"),
            )
        except llm.CallError as err:
            out: dict[str, Any] = {
                "error": {
                    "message": str(err),
                    "retryable": err.retryable,
                    "context_window": err.context_window,
                    "retry_after": err.retry_after,
                }
            }
        except asyncio.CancelledError:
            self.text.pop(call_id, None)
            return
        except Exception as exc:  # never take the other calls down with this one
            out = {"error": {"message": f"{msg['model']}: {type(exc).__name__}: {exc}"[:300]}}
        else:
            fields = asdict(result)
            out = {"result": fields}
        finally:
            self.tasks.pop(call_id, None)
        text = self.text.pop(call_id, None)
        if text:
            out["text"] = "".join(text)
        self.put({"id": call_id, **out})

    async def stream_text(self) -> None:
        """Sends what each call has streamed so far, FLUSH_S apart, with the loop's lag."""
        while True:
            await asyncio.sleep(FLUSH_S)
            for call_id, buf in self.text.items():
                if buf:
                    self.put({"id": call_id, "text": "".join(buf)})
                    buf.clear()
            if self.lag is not None:
                self.put({"lag": round(self.lag.lag_s, 4)})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await asyncio.to_thread(llm.load_litellm)
        self.lag = LoopLag()
        self.lag.start()
        streamer = loop.create_task(self.stream_text())
        while line := await reader.readline():
            msg = json.loads(line)
            op = msg.get("op")
            if op == "call":
                self.tasks[msg["id"]] = loop.create_task(self.call(msg))
            elif op == "cancel":
                task = self.tasks.get(msg["id"])
                if task is not None:
                    task.cancel()
            elif op == "setup":
                self.tokenizers = apply_registration(msg.get("registration") or {})
                self.put({"ready": True})
        # The service closed our stdin: it is stopping. Calls still running are abandoned.
        streamer.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        self.flush()


def main() -> None:
    # The protocol gets stdout to itself: anything a library prints (litellm has banners)
    # goes to stderr, which the service reads into its log, so it can never break a line.
    wire = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(_Serve(wire).run())


if __name__ == "__main__":
    main()
