"""Prompt caching's pure parts: the price of cached reads and writes, the breakpoints a
request is given, and the sim's cache rule."""

from __future__ import annotations

import copy

import pytest

from tower.core import llm
from tower.core.sim import _cached_tokens
from tower.core.tokens import estimate_tokens


def test_cached_reads_cost_less_and_writes_more_and_saved_is_the_difference() -> None:
    p = llm.Price(1e-6, 5e-6, cached_per_token=1e-7, cache_write_per_token=1.25e-6)
    plain = p.cost(3_000, 20)
    mixed = p.cost(3_000, 20, cached=2_000, written=500)
    assert mixed == pytest.approx(500 * 1e-6 + 2_000 * 1e-7 + 500 * 1.25e-6 + 20 * 5e-6)
    assert p.saved_by_caching(2_000, 500) == pytest.approx(plain - mixed)
    assert p.saved_by_caching(0, 800) < 0  # a write alone costs more than plain input
    # A price without cache rates treats cached tokens as plain input: nothing saved.
    bare = llm.Price(1e-6, 5e-6)
    assert bare.cost(3_000, 20, cached=2_000) == bare.cost(3_000, 20)
    assert bare.saved_by_caching(2_000, 0) == 0


def test_breakpoints_mark_the_last_system_message_and_tool_on_copies() -> None:
    messages = [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "ok"},
    ]
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b")]
    before = copy.deepcopy((messages, tools))
    marked, marked_tools = llm.with_breakpoints(messages, tools)
    assert (messages, tools) == before  # the conversation itself is untouched
    assert marked[0]["cache_control"] == {"type": "ephemeral"}
    assert all("cache_control" not in m for m in marked[1:])
    assert marked_tools is not None and "cache_control" in marked_tools[-1]
    assert "cache_control" not in marked_tools[0]
    assert llm.with_breakpoints(messages[1:], None) == (messages[1:], None)


@pytest.mark.parametrize(
    ("model", "takes"),
    [
        ("anthropic/claude-haiku-4-5", True),
        ("claude-sonnet-4-5", True),
        ("bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", True),
        ("openai/gpt-4o-mini", False),
        ("gpt-4o", False),
        ("sim/small", False),
        ("ollama/llama3", False),
    ],
)
def test_which_models_take_breakpoints(model: str, takes: bool) -> None:
    assert llm.takes_breakpoints(model) is takes


def test_the_sims_cache_reads_back_the_previous_prompt_in_blocks() -> None:
    big = {"role": "system", "content": "word " * 2_000}
    first = [big, {"role": "user", "content": "go"}]
    assert _cached_tokens(first, None) == 0  # nothing answered yet: a cold cache
    second = [*first, {"role": "assistant", "content": "done"}, {"role": "user", "content": "more"}]
    cached = _cached_tokens(second, None)
    assert cached % 128 == 0 and 0 < cached <= estimate_tokens(first, None)
    assert estimate_tokens(first, None) - cached < 128
    small = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    assert _cached_tokens([*small, {"role": "user", "content": "x"}], None) == 0  # < 1,024


def test_after_a_fold_the_sims_cache_reads_only_what_came_before_it() -> None:
    """A compaction rewrites the prompt from the first folded result on: the next call can
    read only the part before it from the cache (`cache_upto`), as a provider would."""
    big = {"role": "system", "content": "word " * 2_000}
    tail = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "done"}]
    messages = [
        big,
        {"role": "user", "content": "word " * 1_500},
        *tail,
        {"role": "user", "content": "x"},
    ]
    whole = _cached_tokens(messages, None)
    capped = _cached_tokens(messages, None, upto=1)  # the fold begins at message 1
    assert whole > capped > 0
    assert capped == estimate_tokens(messages[:1], None) // 128 * 128
    assert _cached_tokens(messages, None, upto=0) == 0
