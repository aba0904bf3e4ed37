"""A small OpenAI-compatible HTTP server for tests, on plain asyncio streams.

It serves POST /v1/chat/completions (and /chat/completions) on 127.0.0.1, streamed (SSE) or
not, from a queue of scripted replies the test fills: text, tool calls, usage (with cached and
reasoning tokens), HTTP errors with OpenAI-style bodies, and delays before the headers or
between chunks. It records every request it received so tests can assert on them.

    async with FakeOpenAI() as server:
        server.script(text_reply("hello", usage=Usage(10, 2)))
        await llm.stream_call("openai/gpt-4o-mini", ..., api_base=server.base_url)
        assert server.requests[0].model == "gpt-4o-mini"

A request that finds the queue empty gets a 500 and is counted in `unscripted`, so a test
that made more calls than it scripted (say, a hidden SDK retry) fails instead of passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
PATHS = ("/v1/chat/completions", "/chat/completions")
# Anthropic's Messages API (litellm's `anthropic/…` models with api_base pointing here).
ANTHROPIC_PATHS = ("/v1/messages",)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the server reports as the call's usage; the details appear only when set."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_write_tokens: int | None = None  # Anthropic's cache_creation_input_tokens

    def as_anthropic(self) -> dict[str, Any]:
        """Anthropic's usage: input_tokens excludes what was read from or written to the
        cache, which it reports apart."""
        read, written = self.cached_tokens or 0, self.cache_write_tokens or 0
        return {
            "input_tokens": self.prompt_tokens - read - written,
            "cache_read_input_tokens": read,
            "cache_creation_input_tokens": written,
            "output_tokens": self.completion_tokens,
        }

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            out["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        if self.reasoning_tokens is not None:
            out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    id: str
    name: str
    arguments: str  # raw JSON text, sent in pieces of `Reply.chunk_chars` when streamed


@dataclass(slots=True)
class Reply:
    """One scripted answer to one request."""

    text: str = ""
    tool_calls: list[ScriptedCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None  # default: "tool_calls" with calls, else "stop"
    status: int = 200
    error_body: dict[str, Any] | str | None = None  # the body of a non-200 reply
    headers: dict[str, str] = field(default_factory=dict)
    delay_headers_s: float = 0.0  # before the status line is sent
    delay_chunks_s: float = 0.0  # between streamed chunks
    chunk_chars: int = 4  # text and arguments are streamed this many characters at a time

    @property
    def finish(self) -> str:
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"


def text_reply(text: str, usage: Usage | None = None, **kw: Any) -> Reply:
    return Reply(text=text, usage=usage, **kw)


def tool_reply(
    name: str,
    arguments: dict[str, Any] | str,
    call_id: str = "call_1",
    text: str = "",
    usage: Usage | None = None,
    **kw: Any,
) -> Reply:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return Reply(text=text, tool_calls=[ScriptedCall(call_id, name, args)], usage=usage, **kw)


def error_reply(
    status: int,
    message: str,
    type_: str = "server_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Reply(status=status, error_body=body, headers=dict(headers or {}))


def context_length_reply(prompt_tokens: int = 140_000, limit: int = 128_000) -> Reply:
    """OpenAI's exact shape for a prompt over the model's context window (HTTP 400)."""
    return error_reply(
        400,
        f"This model's maximum context length is {limit} tokens. However, your messages "
        f"resulted in {prompt_tokens} tokens. Please reduce the length of the messages.",
        type_="invalid_request_error",
        code="context_length_exceeded",
        param="messages",
    )


@dataclass(slots=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes = b""

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        return self.body.get("tools")

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))


class FakeOpenAI:
    """The server; use it as an async context manager (or call start/stop)."""

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[Received] = []
        self.unscripted = 0  # requests that found no scripted reply
        # Answers every request the script does not cover (e.g. a tokenizer that counts
        # differently from tower: a reply computed from the request itself).
        self.fallback: Callable[[Received], Reply] | None = None
        self.disconnects = 0  # replies the client walked away from before they were sent
        self.changed = asyncio.Event()  # set whenever a request arrives or a client leaves
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._closing = asyncio.Event()
        self._ids = itertools.count(1)
        self.port = 0
        # The Batch API (/v1/files, /v1/batches): uploaded files, batches, and how many
        # times a batch is polled "in_progress" before it is answered from the script.
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.batch_api = True  # False: /v1/files and /v1/batches answer 404, as llama.cpp's do
        self.batch_polls = 1
        self.batch_status = "completed"  # or "failed" / "expired": how a batch ends
        self.batch_requests: list[dict[str, Any]] = []  # every request line of every batch

    # --- scripting ---------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 30.0) -> None:
        """Waits until pred() holds, re-checking whenever a request arrives or a client leaves
        (the timeout only fails a test that would otherwise hang)."""
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()

    def _notify(self) -> None:
        self.changed.set()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._conns.values()):
            writer.close()  # the handler's next read ends; a pause ends on _closing
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- HTTP --------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns[task] = writer
        try:
            while not self._closing.is_set():  # keep-alive: one request after another
                request = await self._read_request(reader)
                if request is None:
                    break
                if not await self._answer(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._conns.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # the client closed an idle keep-alive connection
        lines = head.decode("latin-1").split("\r\n")
        method, path, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        return Received(method, path.split("?", 1)[0], headers, body, raw)

    async def _answer(
        self, req: Received, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Sends one reply; False when the connection should not be reused."""
        if req.path.startswith(("/v1/files", "/v1/batches")) and self.batch_api:
            self.requests.append(req)
            self._notify()
            status, body, kind = self._batch_api(req)
            if kind == "json":
                await self._send_json(writer, status, body)
            else:
                data = body if isinstance(body, bytes) else b""
                head = {
                    "content-type": "application/octet-stream",
                    "content-length": str(len(data)),
                }
                writer.write(_head(status, head) + data)
                await writer.drain()
            return True
        if req.method != "POST" or req.path not in (*PATHS, *ANTHROPIC_PATHS):
            await self._send_json(writer, 404, {"error": {"message": f"no route {req.path}"}})
            return True
        self.requests.append(req)
        self._notify()
        if not self.replies and self.fallback is not None:
            self.replies.append(self.fallback(req))
        if not self.replies:
            self.unscripted += 1
            body = {"error": {"message": "fake server: no scripted reply", "type": "test"}}
            await self._send_json(writer, 500, body)
            return True
        reply = self.replies.popleft()
        if reply.delay_headers_s and not await self._pause(reply.delay_headers_s, reader):
            return False
        if reply.status != 200:
            body = reply.error_body if reply.error_body is not None else {}
            await self._send_json(writer, reply.status, body, reply.headers)
            return True
        if req.path in ANTHROPIC_PATHS:
            assert req.stream, "the fake serves Anthropic's API streamed only"
            return await self._send_events(writer, self._anthropic_events(req, reply))
        if req.stream:
            return await self._send_stream(req, reply, reader, writer)
        await self._send_json(writer, 200, self._completion(req, reply), reply.headers)
        return True

    async def _pause(self, seconds: float, reader: asyncio.StreamReader) -> bool:
        """Waits `seconds` of simulated latency; False if the client left (or we stop) first."""
        # HTTP/1.1 clients send nothing more while they wait, so a finished read means the
        # client closed the connection (b"") — a timed-out call, say.
        left = asyncio.ensure_future(reader.read(1))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            done, _ = await asyncio.wait(
                {left, closing}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            left.cancel()
            closing.cancel()
        if left in done:
            self.disconnects += 1
            self._notify()
            return False
        return not done

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: dict[str, Any] | str,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        head = {
            "content-type": "application/json",
            "content-length": str(len(data)),
            **(headers or {}),
        }
        writer.write(_head(status, head) + data)
        await writer.drain()

    # --- the Batch API ---------------------------------------------------------------------

    def _batch_api(self, req: Received) -> tuple[int, Any, str]:
        parts = req.path.strip("/").split("/")  # v1, files|batches, [id], [content]
        if parts[1] == "files" and req.method == "POST" and len(parts) == 2:
            data = _multipart_file(req)
            fid = f"file-{next(self._ids)}"
            self.files[fid] = data
            return 200, _file_obj(fid, len(data)), "json"
        if parts[1] == "files" and len(parts) == 4 and parts[3] == "content":
            if parts[2] not in self.files:
                return 404, {"error": {"message": f"no file {parts[2]}"}}, "json"
            return 200, self.files[parts[2]], "bytes"
        if parts[1] == "files" and len(parts) == 3:
            return 200, _file_obj(parts[2], len(self.files.get(parts[2], b""))), "json"
        if parts[1] == "batches" and req.method == "POST" and len(parts) == 2:
            bid = f"batch_{next(self._ids)}"
            batch = {
                "id": bid,
                "object": "batch",
                "endpoint": req.body.get("endpoint"),
                "input_file_id": req.body.get("input_file_id"),
                "completion_window": req.body.get("completion_window"),
                "status": "validating",
                "created_at": 1_700_000_000,
                "output_file_id": None,
                "error_file_id": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "_polls": 0,
            }
            self.batches[bid] = batch
            return 200, _public(batch), "json"
        if parts[1] == "batches" and len(parts) == 3 and parts[2] in self.batches:
            batch = self.batches[parts[2]]
            batch["_polls"] += 1
            if batch["status"] in ("validating", "in_progress"):
                if batch["_polls"] <= self.batch_polls:
                    batch["status"] = "in_progress"
                else:
                    self._run_batch(batch)
            return 200, _public(batch), "json"
        return 404, {"error": {"message": f"no route {req.method} {req.path}"}}, "json"

    def _run_batch(self, batch: dict[str, Any]) -> None:
        """Answers every request line of the batch's input file from the script."""
        if self.batch_status != "completed":
            batch["status"] = self.batch_status
            return
        lines = self.files[batch["input_file_id"]].decode().splitlines()
        out = []
        for line in lines:
            item = json.loads(line)
            self.batch_requests.append(item)
            body = item["body"]
            fake = Received("POST", item["url"], {}, {**body, "stream": False})
            if not self.replies and self.fallback is not None:
                self.replies.append(self.fallback(fake))
            if not self.replies:
                self.unscripted += 1
                reply = Reply(status=500, error_body={"error": {"message": "no scripted reply"}})
            else:
                reply = self.replies.popleft()
            if reply.status != 200:
                response = {"status_code": reply.status, "body": reply.error_body or {}}
            else:
                response = {"status_code": 200, "body": self._completion(fake, reply)}
            out.append(
                {
                    "id": f"req_{next(self._ids)}",
                    "custom_id": item["custom_id"],
                    "response": response,
                    "error": None,
                }
            )
        fid = f"file-{next(self._ids)}"
        self.files[fid] = "".join(json.dumps(o) + "\n" for o in out).encode()
        batch["status"] = "completed"
        batch["output_file_id"] = fid
        batch["request_counts"] = {"total": len(out), "completed": len(out), "failed": 0}

    def _completion(self, req: Received, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in reply.tool_calls
            ]
        out: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": req.model,
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish}],
        }
        if reply.usage is not None:
            out["usage"] = reply.usage.as_json()
        return out

    def _chunks(self, req: Received, reply: Reply) -> Iterator[dict[str, Any]]:
        cid = f"chatcmpl-{next(self._ids)}"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": 1_700_000_000,
                "model": req.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        n = max(1, reply.chunk_chars)
        yield chunk({"role": "assistant", "content": ""})
        for i in range(0, len(reply.text), n):
            yield chunk({"content": reply.text[i : i + n]})
        for idx, call in enumerate(reply.tool_calls):
            first = {"index": idx, "id": call.id, "type": "function"}
            yield chunk(
                {"tool_calls": [{**first, "function": {"name": call.name, "arguments": ""}}]}
            )
            for i in range(0, len(call.arguments), n):
                piece = {"index": idx, "function": {"arguments": call.arguments[i : i + n]}}
                yield chunk({"tool_calls": [piece]})
        yield chunk({}, reply.finish)
        if req.include_usage and reply.usage is not None:
            last = chunk({})
            last["choices"] = []
            last["usage"] = reply.usage.as_json()
            yield last

    async def _send_stream(
        self,
        req: Received,
        reply: Reply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        head = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            **reply.headers,
        }
        writer.write(_head(200, head))
        events = [f"data: {json.dumps(c)}\n\n" for c in self._chunks(req, reply)]
        events.append("data: [DONE]\n\n")
        for i, event in enumerate(events):
            if i and reply.delay_chunks_s:
                await writer.drain()
                if not await self._pause(reply.delay_chunks_s, reader):
                    return False
            data = event.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def _anthropic_events(self, req: Received, reply: Reply) -> list[str]:
        """A streamed Messages API answer: message_start (with the prompt's usage), a text
        block, one tool_use block per call, message_delta (output usage), message_stop."""
        usage = (reply.usage or Usage(0, 0)).as_anthropic()
        out: list[tuple[str, dict[str, Any]]] = []
        message = {
            "id": f"msg_{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        out.append(("message_start", {"type": "message_start", "message": message}))
        index = 0
        if reply.text:
            block = {"type": "text", "text": ""}
            out.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": block},
                )
            )
            delta = {"type": "text_delta", "text": reply.text}
            out.append(
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
            out.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
            index = 1
        for i, call in enumerate(reply.tool_calls, start=index):
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            out.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": i, "content_block": block},
                )
            )
            delta = {"type": "input_json_delta", "partial_json": call.arguments}
            out.append(
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
            )
            out.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        stop = "tool_use" if reply.tool_calls else "end_turn"
        out.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        out.append(("message_stop", {"type": "message_stop"}))
        return [f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in out]

    async def _send_events(self, writer: asyncio.StreamWriter, events: list[str]) -> bool:
        head = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
        }
        writer.write(_head(200, head))
        for event in events:
            data = event.encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _file_obj(fid: str, size: int) -> dict[str, Any]:
    return {
        "id": fid,
        "object": "file",
        "bytes": size,
        "created_at": 1_700_000_000,
        "filename": "batch.jsonl",
        "purpose": "batch",
        "status": "processed",
    }


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _multipart_file(req: Received) -> bytes:
    """The uploaded file's bytes from a multipart/form-data body (the SDK's upload)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    ctype = req.headers.get("content-type", "")
    msg = BytesParser(policy=HTTP).parsebytes(f"content-type: {ctype}\r\n\r\n".encode() + req.raw)
    for part in msg.iter_parts():
        if (
            part.get_filename() is not None
            or part.get_param("name", header="content-disposition") == "file"
        ):
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    return b""


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
