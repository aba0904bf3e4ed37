"""A batch lane: model calls sent through the provider's batch API (litellm's files and
batches), at batch prices, for work that can wait ([lanes] in tower.toml).

A thread on the lane reserves its call at the batch price, as any call is reserved, before
the call joins a batch: so a batch is only sent once every call in it is reserved. The
lane collects calls per model for `collect_s` seconds (or `max_calls` of them), writes
them as a JSONL file (one request per line, its `custom_id` the call's id), uploads it,
creates the batch, and asks every `poll_s` seconds whether it is done. Then it reads the
output file and hands each call its answer. Each call is recorded like any other
(llm_started, llm_finished), so replay, resume and export need nothing new. The batch
itself is an event (`batch`), so the screen shows the threads waiting on it, with its age.

The sim models have no batch API. A sim batch waits one poll, then answers each request
through litellm's sim provider, so an offline project shows the lane at work.

A lane with a `window` ("01:00-06:00", local time) starts its tasks only inside it; the
queue shows when they will start (`window_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tower.core import llm
from tower.core import payloads as pl
from tower.core.project import LaneSettings
from tower.core.simprofiles import is_sim

log = logging.getLogger("tower.batch")

# Providers whose batch API litellm speaks (files + batches).
BATCH_PROVIDERS = frozenset({"openai", "azure", "hosted_vllm", "vertex_ai", "bedrock"})
_DONE = frozenset({"completed", "failed", "expired", "cancelled"})


def window_state(window: tuple[int, int] | None, now: datetime) -> tuple[bool, datetime | None]:
    """Whether a lane's window is open at `now` (local time), and when it next opens
    (None while open). Minutes after midnight; a window may wrap past midnight."""
    if window is None:
        return True, None
    start, end = window
    minute = now.hour * 60 + now.minute
    inside = start <= minute < end if start < end else minute >= start or minute < end
    if inside:
        return True, None
    opens = now.replace(hour=start // 60, minute=start % 60, second=0, microsecond=0)
    if opens <= now:
        opens += timedelta(days=1)
    return False, opens


@dataclass
class _Request:
    call: str
    thread: str
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    max_tokens: int
    temperature: float | None
    metadata: dict[str, Any] | None
    endpoint: dict[str, Any]
    future: asyncio.Future[llm.CallResult] = field(repr=False)


class BatchLane:
    """One lane's batches. `emit` records an event; `waiting` puts a thread in the waiting
    state with a reason (the supervisor's own)."""

    def __init__(
        self,
        name: str,
        settings: LaneSettings,
        emit: Callable[..., object],
        waiting: Callable[[str, str], None],
    ) -> None:
        self.name = name
        self.settings = settings
        self.emit = emit
        self.waiting = waiting
        self.pending: dict[str, list[_Request]] = {}  # by model: calls not sent yet
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(
        self,
        thread: str,
        call: str,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        max_tokens: int,
        temperature: float | None = None,
        metadata: dict[str, Any] | None = None,
        endpoint: dict[str, Any] | None = None,
    ) -> llm.CallResult:
        """The call's answer, once its batch is done; CallError if the batch failed it."""
        loop = asyncio.get_running_loop()
        req = _Request(
            call, thread, model, list(messages), tools, max_tokens, temperature, metadata,
            dict(endpoint or {}), loop.create_future(),
        )  # fmt: skip
        queue = self.pending.setdefault(model, [])
        queue.append(req)
        if len(queue) >= self.settings.max_calls:
            self._send(model)
        elif model not in self._timers:
            self._timers[model] = loop.call_later(self.settings.collect_s, self._send, model)
        try:
            return await req.future
        except asyncio.CancelledError:
            if req in self.pending.get(model, []):
                self.pending[model].remove(req)  # not sent yet: it simply leaves
            raise

    def _send(self, model: str) -> None:
        timer = self._timers.pop(model, None)
        if timer is not None:
            timer.cancel()
        reqs = [r for r in self.pending.pop(model, []) if not r.future.done()]
        if not reqs:
            return
        batch = f"{self.name}-{reqs[0].call}"  # call ids never repeat in a session's log
        task = asyncio.create_task(self._run(batch, model, reqs), name=f"batch:{batch}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: str, model: str, reqs: list[_Request]) -> None:
        calls, threads = [r.call for r in reqs], sorted({r.thread for r in reqs})
        self._record(batch, model, "submitted", calls, threads)
        for tid in threads:
            self.waiting(tid, f"batch {batch}")
        try:
            if is_sim(model):
                answers, status, provider_id = await self._sim_batch(reqs), "completed", ""
            else:
                answers, status, provider_id = await self._provider_batch(batch, model, reqs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # litellm raises many types: the batch failed, one line
            base = reqs[0].endpoint.get("api_base")
            err = llm.read_error(exc, model, base)
            if "(404)" in str(err) and not isinstance(exc, llm.CallError):
                # A 404 from the files or batches endpoint: a server without a batch API
                # (llama.cpp's, say), not a missing model.
                where = base or "the provider"
                err = llm.CallError(f"{model}: {where} has no batch API (HTTP 404)", False)
            self._record(batch, model, "failed", calls, threads, error=str(err))
            for r in reqs:
                if not r.future.done():
                    r.future.set_exception(llm.CallError(f"batch {batch}: {err}", err.retryable))
            return
        self._record(batch, model, status, calls, threads, provider_id=provider_id)
        for r in reqs:
            if r.future.done():
                continue
            answer = answers.get(r.call)
            if isinstance(answer, llm.CallResult):
                r.future.set_result(answer)
            else:
                why = answer if isinstance(answer, str) else f"the batch ended {status}"
                r.future.set_exception(llm.CallError(f"batch {batch}: {why}", retryable=True))

    def _record(
        self,
        batch: str,
        model: str,
        status: str,
        calls: list[str],
        threads: list[str],
        provider_id: str = "",
        error: str = "",
    ) -> None:
        self.emit(
            pl.BatchChanged(
                batch=batch,
                lane=self.name,
                model=model,
                status=status,
                calls=calls,
                threads=threads,
                provider_id=provider_id,
                error=error,
            )
        )

    async def _sim_batch(self, reqs: list[_Request]) -> dict[str, llm.CallResult | str]:
        """The sim has no batch API: one poll's wait, then each request through litellm."""
        await asyncio.sleep(min(self.settings.poll_s, 3600))
        out: dict[str, llm.CallResult | str] = {}
        for r in reqs:
            try:
                out[r.call] = await llm.stream_call(
                    r.model, r.messages, r.tools, r.max_tokens, 600.0, lambda _t: None,
                    r.metadata, temperature=r.temperature,
                )  # fmt: skip
            except llm.CallError as err:
                out[r.call] = str(err)
        return out

    async def _provider_batch(
        self, batch: str, model: str, reqs: list[_Request]
    ) -> tuple[dict[str, llm.CallResult | str], str, str]:
        litellm = llm.load_litellm()
        provider = litellm.get_llm_provider(model)[1]
        if provider not in BATCH_PROVIDERS:
            raise llm.CallError(f"{model}: litellm has no batch API for {provider}", False)
        bare = model.split("/", 1)[1] if model.startswith(f"{provider}/") else model
        lines = []
        for r in reqs:
            body: dict[str, Any] = {
                "model": bare,
                "messages": r.messages,
                "max_tokens": r.max_tokens,
            }
            if r.tools:
                body["tools"] = r.tools
            if r.temperature is not None:
                body["temperature"] = r.temperature
            line = {
                "custom_id": r.call,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            lines.append(json.dumps(line, ensure_ascii=False))
        kw: dict[str, Any] = {"custom_llm_provider": provider, **reqs[0].endpoint}
        kw.pop("prompt_cache", None)
        data = ("\n".join(lines) + "\n").encode()
        uploaded = await litellm.acreate_file(
            file=(f"tower-{batch}.jsonl", data), purpose="batch", **kw
        )
        created = await litellm.acreate_batch(
            completion_window="24h",
            endpoint="/v1/chat/completions",
            input_file_id=uploaded.id,
            **kw,
        )
        provider_id = str(created.id)
        self._record(
            batch,
            model,
            "running",
            [r.call for r in reqs],
            sorted({r.thread for r in reqs}),
            provider_id,
        )
        status = str(created.status)
        current = created
        while status not in _DONE:
            await asyncio.sleep(self.settings.poll_s)
            current = await litellm.aretrieve_batch(batch_id=provider_id, **kw)
            status = str(current.status)
        if status != "completed" or not current.output_file_id:
            return {}, status, provider_id
        content = await litellm.afile_content(file_id=current.output_file_id, **kw)
        raw = getattr(content, "content", content)
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return _answers(text, model), status, provider_id

    async def close(self) -> None:
        """Cancels the batches still waiting (the session stops; the threads are stopped)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for reqs in self.pending.values():
            for r in reqs:
                if not r.future.done():
                    r.future.cancel()
        self.pending.clear()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _answers(text: str, model: str) -> dict[str, llm.CallResult | str]:
    """The output file's lines, by custom_id: a CallResult, or why that request failed."""
    out: dict[str, llm.CallResult | str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            call = str(item["custom_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("a line of a batch's output is not an answer: %.200r", line)
            continue
        response = item.get("response") or {}
        if response.get("status_code") != 200:
            error = (response.get("body") or {}).get("error") or item.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            out[call] = f"{model}: HTTP {response.get('status_code')}: {message}"[:300]
            continue
        try:
            out[call] = _result(response["body"])
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            out[call] = f"{model}: an answer of the wrong shape ({type(exc).__name__})"
    return out


def _result(body: dict[str, Any]) -> llm.CallResult:
    message = body["choices"][0]["message"]
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    result = llm.CallResult(
        text=message.get("content") or "",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=str(body["choices"][0].get("finish_reason") or "stop"),
        cached_tokens=int(details.get("cached_tokens") or 0),
    )
    for tc in message.get("tool_calls") or []:
        fn = tc["function"]
        result.tool_calls.append(
            llm.ToolCall(str(tc["id"]), str(fn["name"]), str(fn.get("arguments") or ""))
        )
    return result
