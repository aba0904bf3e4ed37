"""litellm machinery tower does not use is switched off per call (issue 15's per-call CPU):
a stream's end schedules none of litellm's success handlers, and a sim call does not ask
litellm to pass usage chunks through; the usage tower reads is still the provider's own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tower.core import llm


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every time litellm dispatches its success handlers (logging, cost, callbacks)."""
    litellm = llm.load_litellm()
    from litellm.litellm_core_utils.litellm_logging import Logging

    seen: list[Any] = []
    real = Logging.dispatch_success_handlers

    async def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(args)
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(Logging, "dispatch_success_handlers", spy)
    assert litellm is not None
    return seen


async def _call(model: str, **kw: Any) -> llm.CallResult:
    texts: list[str] = []
    return await llm.stream_call(
        model,
        [{"role": "user", "content": "Say something about the weather."}],
        None,
        256,
        30.0,
        texts.append,
        **kw,
    )


async def test_a_sim_stream_ends_without_litellm_success_handlers(dispatched: list[Any]) -> None:
    result = await _call("sim/instant")
    await asyncio.sleep(0)  # a task litellm scheduled at the stream's end would run now
    for _ in range(5):
        await asyncio.sleep(0)
    assert dispatched == []
    assert result.prompt_tokens > 0 and result.completion_tokens > 0 and result.text


async def test_the_control_litellm_dispatches_them_without_the_hook(
    dispatched: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same call with the hook switched off: litellm does schedule them (so the test
    above can fail)."""
    monkeypatch.setattr(llm, "skip_success_logging", lambda resp: None)
    await _call("sim/instant")
    for _ in range(50):
        if dispatched:
            break
        await asyncio.sleep(0.01)  # a task litellm scheduled; nothing else to wait on
    assert len(dispatched) == 1


async def test_a_sim_call_reads_the_providers_usage_from_the_streams_end() -> None:
    """No include_usage for the sim, yet the usage is the sim's own count (not tower's
    estimate), the same as when litellm is asked to pass it through."""
    litellm = llm.load_litellm()
    messages = [{"role": "user", "content": "Say something about the weather."}]
    plain = await _call("sim/instant")
    resp = await litellm.acompletion(
        model="sim/instant",
        messages=messages,
        max_tokens=256,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = None
    async for chunk in resp:
        usage = getattr(chunk, "usage", None) or usage
    assert usage is not None
    assert (plain.prompt_tokens, plain.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert not plain.usage_estimated
