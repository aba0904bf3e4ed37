"""The offline `sim/…` models: a real litellm custom provider that follows per-task scripts.

It is stateless: the k-th model call of a thread (k = assistant turns so far) plays script
step k, with randomness seeded from (seed, thread, step, model, attempt). So a replayed,
resumed or forked thread gets the same answers. Imported only by `llm.load_litellm()`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

from litellm import CustomLLM
from litellm.llms.custom_llm import CustomLLMError
from litellm.types.llms.openai import ChatCompletionToolCallChunk, ChatCompletionUsageBlock
from litellm.types.utils import GenericStreamingChunk

from tower.core.check import CHECK_FAILED
from tower.core.simprofiles import FAULT_NAMES, SIM_PROFILES, SimProfile
from tower.core.tokens import estimate_tokens, text_tokens

# A streamed piece is at least this many tokens, and a sim stream yields about twice a
# second at most: a thousand streaming sim threads then cost litellm's chunk handling (about
# 0.1 ms a chunk) a fraction of a core, and the token rate is still the configured one.
_MIN_PIECE_TOKENS = 4
_TICK_S = 0.5
# What a gullible (`obey = true`) step takes as an order inside a tool result.
_ORDER = re.compile(r"\brun\s+`([^`]+)`|\brun:\s*(.+)$", re.IGNORECASE | re.MULTILINE)


def _injected_order(messages: list[dict[str, Any]]) -> str | None:
    """The command a prompt injection in the last tool result asks for, if any."""
    for m in reversed(messages):
        if m.get("role") == "tool":
            found = _ORDER.search(str(m.get("content") or ""))
            return (found.group(1) or found.group(2)).strip() if found else None
        if m.get("role") == "assistant":
            return None
    return None


def _chunk(
    text: str = "",
    tool: ChatCompletionToolCallChunk | None = None,
    finished: bool = False,
    reason: str = "",
    usage: ChatCompletionUsageBlock | None = None,
) -> GenericStreamingChunk:
    return GenericStreamingChunk(
        text=text, tool_use=tool, is_finished=finished, finish_reason=reason, usage=usage, index=0
    )


# OpenAI's automatic prompt caching: a prompt of at least 1,024 tokens is cached from its
# start in blocks of 128 tokens; a later prompt that begins the same reads that part back.
_CACHE_MIN_TOKENS = 1024
_CACHE_BLOCK = 128


def _cached_tokens(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, upto: int | None = None
) -> int:
    """Prompt tokens the sim reads from its cache: the thread's previous prompt (everything
    before its last answer), up to `upto` when a compaction changed the prompt from there.
    Stateless, so a thread sees the same figures in any process, and deterministic."""
    last = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"),
        None,
    )
    if last is None:
        return 0
    if upto is not None:
        last = min(last, upto)
    prefix = estimate_tokens(messages[:last], tools)
    if prefix < _CACHE_MIN_TOKENS:
        return 0
    return prefix // _CACHE_BLOCK * _CACHE_BLOCK


def _summary(messages: list[dict[str, Any]]) -> str:
    """A sim's summary of tool results it was given (core/compaction.py asks): the first
    line of each, as a cheap model might keep the gist."""
    text = str(messages[-1].get("content") or "") if messages else ""
    parts = re.split(r"^--- result \d+ \(tool call [^)]*\) ---$", text, flags=re.M)[1:]
    gist = [next((ln.strip() for ln in p.splitlines() if ln.strip()), "")[:120] for p in parts]
    return "\n".join(f"- {g}" for g in gist) or "- (nothing to keep)"


def _listing(messages: list[dict[str, Any]]) -> list[str]:
    """The files of the last folder listing the model was given (list_dir's result)."""
    lists = {
        tc.get("id")
        for m in messages
        if m.get("role") == "assistant"
        for tc in m.get("tool_calls") or []
        if (tc.get("function") or {}).get("name") == "list_dir"
    }
    for m in reversed(messages):
        if m.get("role") == "tool" and m.get("tool_call_id") in lists:
            lines = str(m.get("content") or "").splitlines()
            return [ln for ln in lines if ln.strip() and not ln.endswith("/")]
    return []


def _last_result(messages: list[dict[str, Any]]) -> str:
    return next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "tool"), ""
    )


def _fill(value: Any, fields: dict[str, str]) -> Any:
    """`{file}` and `{last_result}` in a scripted step's args (strings, at any depth)."""
    if isinstance(value, str):
        for name, text in fields.items():
            value = value.replace("{" + name + "}", text)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fields) for v in value]
    return value


# A file a task names: a relative path with an extension (`inventory/stock.py`, `NOTES.md`).
_PATH = re.compile(r"(?<![\w/.-])(?:[\w-]+/)*[\w-]+\.[A-Za-z]{2,5}\b")
_DEFINES = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)", re.MULTILINE)


def _one_file_step(
    k: int, path: str, messages: list[dict[str, Any]], tools: set[str]
) -> dict[str, Any]:
    """A sub-agent's usual job: read the one file its task names, then report on it."""
    if k == 0:
        return {"say": f"Reading {path}.", "tool": "read_file", "args": {"path": path}}
    text = _last_result(messages)
    if text.startswith("error:"):
        report = f"{path}: could not be read ({text[6:].strip()})."
    else:
        names = _DEFINES.findall(text)
        shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
        report = f"{path}: {len(text.splitlines())} line(s)" + (
            f"; defines {shown}." if names else "."
        )
    if "finish" in tools:
        return {"say": "Done reading.", "tool": "finish", "args": {"answer": report}}
    return {"say": report}


def _default_step(
    k: int, messages: list[dict[str, Any]], tools: set[str], sub_agent: bool = False
) -> dict[str, Any]:
    """Behaviour for a task without a script: look around, read one file, report. A
    sub-agent whose task names a file reads that one and reports on it."""
    task = next((str(m.get("content") or "") for m in messages if m.get("role") == "user"), "")
    path = _PATH.search(task) if sub_agent else None
    if path is not None and "read_file" in tools:
        return _one_file_step(k, path.group(0), messages, tools)
    if k == 0 and "list_dir" in tools:
        return {
            "say": "Let me look at the workspace first.",
            "tool": "list_dir",
            "args": {"path": "."},
        }
    listing = next((m.get("content") or "" for m in messages if m.get("role") == "tool"), "")
    files = [ln.strip() for ln in listing.splitlines() if ln.strip() and not ln.endswith("/")]
    reads = sum(1 for m in messages if m.get("role") == "assistant") - 1
    if files and reads < 1 and "read_file" in tools:
        return {"say": f"Reading {files[0]}.", "tool": "read_file", "args": {"path": files[0]}}
    last = _last_result(messages)
    summary = f"Looked at {len(files)} file(s)" + (
        f"; {files[0]} has {len(last.splitlines())} line(s)." if files else "."
    )
    if "finish" in tools:
        return {"say": "That is all I need.", "tool": "finish", "args": {"answer": summary}}
    return {"say": summary}


class SimProvider(CustomLLM):
    """litellm calls `astreaming` for `sim/<name>` with stream=True, `acompletion` otherwise."""

    # litellm types CustomLLM.astreaming as a coroutine that returns the stream, but its router
    # hands what the call returns straight to CustomStreamWrapper, which iterates it: only an
    # async generator works, so this override cannot match the declared (wrong) type.
    async def astreaming(
        self, model: str, messages: list, *args: Any, **kwargs: Any
    ) -> AsyncIterator[GenericStreamingChunk]:
        optional = kwargs.get("optional_params") or {}
        params = kwargs.get("litellm_params") or {}
        sim: dict[str, Any] = (params.get("metadata") or {}).get("tower_sim") or {}
        name = model if model.startswith("sim/") else f"sim/{model}"
        base = SIM_PROFILES.get(name)
        if base is None:
            raise CustomLLMError(404, f"unknown sim model {name!r}")
        prof: SimProfile = base.with_overrides(sim.get("profile") or {})
        tool_names = {t.get("function", {}).get("name") for t in (optional.get("tools") or [])}
        # An answer the task's check refused is answered again: that step plays once more
        # (on the stronger model after an escalation, with that model's error rate).
        redo = sum(1 for m in messages if str(m.get("content") or "").startswith(CHECK_FAILED))
        turns = sum(1 for m in messages if m.get("role") == "assistant")
        k = turns - redo
        attempt = int(sim.get("attempt", 0))
        thread = sim.get("thread", "")
        seed = sim.get("seed", 0)
        rng = random.Random(f"{seed}:{thread}:{k}:{name}:{attempt}" + (f":{redo}" if redo else ""))

        prompt = estimate_tokens(messages, optional.get("tools"))
        if prompt > prof.context_window:  # as a provider says it (llm.read_error reads it)
            raise CustomLLMError(
                400,
                f"This model's maximum context length is {prof.context_window} tokens."
                f" However, your messages resulted in {prompt} tokens.",
            )
        script = sim.get("script")
        step: dict[str, Any]
        if sim.get("compaction"):  # asked to summarise a thread's folded tool results
            step = {"say": _summary(messages)}
        elif script:
            step = (
                script[k]
                if k < len(script)
                else {
                    "say": "I have nothing left to do.",
                    "tool": "finish" if "finish" in tool_names else None,
                    "args": {"answer": "Done."},
                }
            )
        else:
            step = _default_step(k, messages, tool_names, bool(sim.get("sub_agent")))

        fault = step.get("fault") if attempt < int(step.get("fault_times", 1)) else None
        if fault is None:
            for fname in FAULT_NAMES:
                chance = prof.faults.get(fname, 0.0)
                if chance and rng.random() < chance:
                    fault = fname
                    break
        if fault == "rate_limit":
            raise CustomLLMError(429, f"{name} rate limit reached, retry later")
        if fault == "server_error":
            raise CustomLLMError(503, f"{name} is overloaded")
        if fault == "timeout":
            await asyncio.sleep(3600)  # the caller's timeout ends this

        if prof.latency_s:
            # Real providers jitter; identical threads would otherwise move in lockstep.
            await asyncio.sleep(prof.latency_s * (0.5 + rng.random()))

        tool_args = step.get("args") or {}
        order = _injected_order(messages) if step.get("obey") else None
        if order is not None and "run_shell" in tool_names:
            # A model that does what a file or web page told it to: the policy must hold.
            step = {"say": f"The instructions say to run {order}.", "tool": "run_shell"}
            tool_args = {"command": order}
        if (
            step.get("wrong_args") is not None
            and prof.wrong_rate
            and rng.random() < prof.wrong_rate
        ):
            tool_args = step["wrong_args"]
        text = step.get("say") or ""
        tool = step.get("tool")
        if tool is not None and tool not in tool_names:
            tool = None  # a sim never calls a tool it was not offered
        arguments = json.dumps(tool_args, ensure_ascii=False)
        if fault == "malformed_tool_json" and tool is not None:
            arguments = arguments[: max(len(arguments) // 2, 1)] + '"'

        calls: list[str] = []
        if tool is not None and step.get("each") == "file":  # a fan-out: one call a file
            fields = {"last_result": _last_result(messages)}
            calls = [
                json.dumps(_fill(tool_args, {**fields, "file": f}), ensure_ascii=False)
                for f in _listing(messages)
            ]
        elif tool is not None and "{last_result}" in arguments:
            filled = _fill(tool_args, {"last_result": _last_result(messages)})
            calls = [json.dumps(filled, ensure_ascii=False)]
        elif tool is not None:
            calls = [arguments]  # most steps: the arguments as written, nothing to fill
        async for piece in self._pieces(text, prof):
            yield _chunk(piece)
        for i, call_args in enumerate(calls):
            yield _chunk(
                tool={
                    "id": f"call_{thread}_{turns}_{attempt}" + (f"_{i}" if i else ""),
                    "type": "function",
                    "index": i,
                    "function": {"name": tool or "", "arguments": call_args},
                }
            )
        cached = (
            _cached_tokens(messages, optional.get("tools"), sim.get("cache_upto"))
            if sim.get("cache", True) and prompt >= _CACHE_MIN_TOKENS  # else none to read
            else 0
        )
        completion = text_tokens(text) + sum(text_tokens(a) for a in calls)
        max_tokens = optional.get("max_tokens")
        if max_tokens:
            completion = min(completion, int(max_tokens))
        yield _chunk(
            finished=True,
            reason="tool_calls" if calls else "stop",
            usage={
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": min(cached, prompt)},
            },
        )

    @staticmethod
    async def _pieces(text: str, prof: SimProfile) -> AsyncIterator[str]:
        if not text:
            return
        rate = prof.tokens_per_s
        if not rate:
            yield text
            return
        piece_chars = max(_MIN_PIECE_TOKENS, int(rate * _TICK_S)) * 4
        for i in range(0, len(text), piece_chars):
            piece = text[i : i + piece_chars]
            await asyncio.sleep(text_tokens(piece) / rate)
            yield piece
