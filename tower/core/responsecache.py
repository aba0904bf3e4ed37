"""The response cache ([cache] responses): an identical call already answered in this
database is served from the log instead of the provider.

Identical means the same model, messages, tools and sampling settings (max_tokens,
temperature), hashed to a key recorded on the answer's llm_finished. A hit is its own
event (llm_cached) naming the answer it reused, costs $0, and folds into the conversation
as the call and its reply, so replay, resume, fork and export need nothing new. A call
sampled above temperature 0 (or at the provider's default, which is above 0) is meant to
vary, so it is never served from the cache unless the project says `any_temperature`.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

# Answers of this session not yet known to be committed: looked up before the database.
_RECENT = 10_000


def response_key(
    model: str,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    max_tokens: int,
    temperature: float | None,
) -> str:
    """The call's identity: a SHA-256 of its canonical JSON (sorted keys, no spaces)."""
    body = {
        "model": model,
        "messages": messages,
        "tools": tools or [],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def may_serve(temperature: float | None, any_temperature: bool) -> bool:
    """Whether a call at this temperature may be answered from the cache (and recorded for
    it): only a deterministic one (temperature 0), unless the project allows any."""
    return any_temperature or temperature == 0


def worth_keeping(text: str, tool_calls: list[Any], finish_reason: str) -> bool:
    """An answer another call may reuse: it said something, and was not cut off."""
    return bool(text.strip() or tool_calls) and finish_reason != "length"


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer found for a key: where it was recorded and what it said."""

    session: str
    seq: int
    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float = 0.0

    @classmethod
    def of(cls, session: str, seq: int, payload: dict[str, Any]) -> CachedAnswer | None:
        """From a recorded llm_finished payload; None if it is not one (a damaged row)."""
        text, calls = payload.get("text", ""), payload.get("tool_calls") or []
        usage, cost = payload.get("usage") or {}, payload.get("cost_usd", 0.0)
        if not isinstance(text, str) or not isinstance(calls, list):
            return None
        if not isinstance(usage, dict) or not isinstance(cost, int | float):
            return None
        if not all(isinstance(c, dict) and isinstance(c.get("function"), dict) for c in calls):
            return None
        return cls(session, seq, text, calls, usage, float(cost))


class RecentAnswers:
    """This session's latest cacheable answers, by key, so a call identical to one answered
    a moment ago finds it before the writer has committed it."""

    def __init__(self, size: int = _RECENT) -> None:
        self.size = size
        self._by_key: OrderedDict[str, CachedAnswer] = OrderedDict()

    def add(self, key: str, answer: CachedAnswer) -> None:
        self._by_key.setdefault(key, answer)
        while len(self._by_key) > self.size:
            self._by_key.popitem(last=False)

    def get(self, key: str) -> CachedAnswer | None:
        return self._by_key.get(key)


class Responses:
    """A session's response cache: keys its eligible calls, finds answers (this session's
    latest first, then the database's), and remembers the answers it records.

    `lookup`: the store's `answer_for` (async, key → (session, seq, payload) or None)."""

    def __init__(
        self,
        lookup: Callable[[str], Awaitable[tuple[str, int, dict[str, Any]] | None]],
        session: str,
        any_temperature: bool = False,
    ) -> None:
        self.lookup = lookup
        self.session = session
        self.any_temperature = any_temperature
        self.recent = RecentAnswers()

    def key(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        max_tokens: int,
        temperature: float | None,
    ) -> str | None:
        """The call's key, or None when a call at this temperature may not be cached."""
        if not may_serve(temperature, self.any_temperature):
            return None
        return response_key(model, messages, tools, max_tokens, temperature)

    async def find(self, key: str) -> CachedAnswer | None:
        found = self.recent.get(key)
        if found is not None:
            return found
        row = await self.lookup(key)
        return CachedAnswer.of(*row) if row is not None else None

    def remember(self, key: str, seq: int, payload: dict[str, Any]) -> None:
        answer = CachedAnswer.of(self.session, seq, payload)
        if answer is not None:
            self.recent.add(key, answer)
