"""The real-HTTP path: tower → litellm's `openai/` provider → an OpenAI-compatible server.

The server is tests/fake_openai.py on 127.0.0.1, scripted per request. tower reaches it the
way a user reaches a local server: `api_base` (llm.stream_call's argument, and a project's
`[models."openai/…"] api_base`). The OpenAI environment variables are cleared, so a call that
lost its api_base would go nowhere and fail. Streaming, tool-call assembly, usage and cost,
error reading, retries, timeouts, context-window escalation and litellm's silence are all
checked over real sockets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import Live, ended
from tests.fake_openai import (
    FakeOpenAI,
    Reply,
    ScriptedCall,
    Usage,
    context_length_reply,
    error_reply,
    text_reply,
    tool_reply,
)
from tower.core import llm
from tower.core.events import EventKind, ThreadState
from tower.core.tools import tool_schemas

MODEL = "openai/gpt-4o-mini"
UNPRICED = "openai/my-local-model"
KEY = "sk-fake-key-for-tests"
MSGS: list[dict[str, Any]] = [{"role": "user", "content": "What is in the workspace?"}]
TOOLS = tool_schemas(["read_file", "finish"])
OPENAI_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")
_warmed = False


async def _warm_up(server: FakeOpenAI) -> None:
    """The first litellm call of a process pays for its lazy imports (about a second): pay it
    once here, so the short call timeouts below time the server, not the imports."""
    global _warmed
    if _warmed:
        return
    server.script(text_reply("warm", usage=Usage(1, 1)))
    await llm.stream_call(
        MODEL, MSGS, None, 16, 60.0, lambda _t: None, api_base=server.base_url, api_key=KEY
    )
    server.requests.clear()
    _warmed = True


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """A started fake server; no OpenAI variable is set, so only api_base leads to it."""
    for var in OPENAI_ENV:
        monkeypatch.delenv(var, raising=False)
    async with FakeOpenAI() as srv:
        await _warm_up(srv)
        yield srv
        assert srv.unscripted == 0, f"{srv.unscripted} request(s) found no scripted reply"


async def call(
    server: FakeOpenAI,
    model: str = MODEL,
    tools: list[dict[str, Any]] | None = None,
    timeout_s: float = 20.0,
    on_text: Callable[[str], None] | None = None,
    tokenizer: Any = None,
) -> llm.CallResult:
    """tower's own streamed call, at the fake server."""
    return await llm.stream_call(
        model,
        MSGS,
        tools,
        64,
        timeout_s,
        on_text or (lambda _t: None),
        None,
        api_base=server.base_url,
        api_key=KEY,
        tokenizer=tokenizer,
    )


async def reference_cost(server: FakeOpenAI, model: str, usage: Usage) -> float:
    """litellm.completion_cost of a NON-streamed call that got `usage` from the server."""
    litellm = llm.load_litellm()
    server.script(text_reply("reference", usage=usage))
    resp = await litellm.acompletion(
        model=model,
        messages=MSGS,
        stream=False,
        num_retries=0,
        api_base=server.base_url,
        api_key=KEY,
    )
    assert server.requests[-1].stream is False
    assert resp.usage.prompt_tokens == usage.prompt_tokens
    return float(litellm.completion_cost(completion_response=resp))


# --- tower's stream_call over HTTP -------------------------------------------------------


async def test_streamed_text_is_assembled_and_usage_read(server: FakeOpenAI) -> None:
    text = "There are two files: readme.txt and data.csv."
    usage = Usage(1_234, 56, cached_tokens=1_024, reasoning_tokens=20)
    server.script(text_reply(text, usage=usage, chunk_chars=3))
    pieces: list[str] = []
    result = await call(server, on_text=pieces.append)
    assert len(pieces) > 5 and "".join(pieces) == text  # really streamed, in order
    assert result.text == text and result.tool_calls == []
    assert result.finish_reason == "stop"
    assert (result.prompt_tokens, result.completion_tokens) == (1_234, 56)
    assert (result.cached_tokens, result.reasoning_tokens) == (1_024, 20)
    assert result.cost_usd is not None and result.cost_usd > 0
    [req] = server.requests
    assert req.model == "gpt-4o-mini"  # the provider prefix is litellm's, not the server's
    assert req.stream and req.include_usage
    assert req.messages == MSGS
    assert req.body["max_tokens"] == 64
    assert req.tools is None


async def test_streamed_tool_calls_are_assembled_from_split_arguments(server: FakeOpenAI) -> None:
    read_args = json.dumps({"path": "notes/a long name.txt"})
    finish_args = json.dumps({"answer": "done — ünïcode"})
    reply = Reply(
        text="Let me look.",
        tool_calls=[
            ScriptedCall("call_read", "read_file", read_args),
            ScriptedCall("call_fin", "finish", finish_args),
        ],
        usage=Usage(300, 45),
        chunk_chars=2,  # every argument string arrives in many pieces
    )
    server.script(reply)
    result = await call(server, tools=TOOLS)
    assert result.text == "Let me look."
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == [
        llm.ToolCall("call_read", "read_file", read_args),
        llm.ToolCall("call_fin", "finish", finish_args),
    ]
    assert json.loads(result.tool_calls[1].arguments) == {"answer": "done — ünïcode"}
    assert result.assistant_message()["tool_calls"][0] == {
        "id": "call_read",
        "type": "function",
        "function": {"name": "read_file", "arguments": read_args},
    }
    [req] = server.requests
    assert [t["function"]["name"] for t in req.tools or []] == ["read_file", "finish"]
    assert req.tools == TOOLS


async def test_usage_without_details_has_no_cached_or_reasoning_tokens(
    server: FakeOpenAI,
) -> None:
    server.script(text_reply("ok", usage=Usage(100, 7)))
    result = await call(server)
    assert (result.prompt_tokens, result.completion_tokens) == (100, 7)
    assert (result.cached_tokens, result.reasoning_tokens) == (0, 0)
    price = llm.model_price(MODEL)
    assert price is not None
    assert result.cost_usd == pytest.approx(price.cost(100, 7), rel=1e-12)


# --- cost truth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("openai/gpt-4o-mini", None),
        ("openai/gpt-4o", None),
        ("openai/o3-mini", 900),
        ("openai/gpt-4.1-mini", None),
    ],
)
async def test_streamed_cost_equals_litellm_completion_cost(
    server: FakeOpenAI, model: str, reasoning: int | None
) -> None:
    cached = Usage(12_000, 1_500, cached_tokens=8_192, reasoning_tokens=reasoning)
    server.script(text_reply("answer", usage=cached))
    streamed = await call(server, model)
    truth = await reference_cost(server, model, cached)
    assert streamed.cost_usd is not None and streamed.cost_usd > 0
    assert streamed.cost_usd == pytest.approx(truth, rel=1e-12)
    assert streamed.cached_tokens == 8_192 and streamed.reasoning_tokens == (reasoning or 0)

    # The cache-read price, from the same cost map, makes cached tokens cheaper.
    info = llm.load_litellm().get_model_info(model)
    inp, out = info["input_cost_per_token"], info["output_cost_per_token"]
    read = info["cache_read_input_token_cost"]
    assert read < inp
    expected = (12_000 - 8_192) * inp + 8_192 * read + 1_500 * out
    assert streamed.cost_usd == pytest.approx(expected, rel=1e-9)
    server.script(text_reply("answer", usage=Usage(12_000, 1_500, reasoning_tokens=reasoning)))
    uncached = await call(server, model)
    assert uncached.cost_usd == pytest.approx(12_000 * inp + 1_500 * out, rel=1e-9)
    assert streamed.cost_usd < uncached.cost_usd
    assert uncached.cost_usd - streamed.cost_usd == pytest.approx(8_192 * (inp - read), rel=1e-9)
    assert [r.model for r in server.requests] == [model.removeprefix("openai/")] * 3


async def test_a_model_litellm_has_no_price_for_costs_none(server: FakeOpenAI) -> None:
    assert llm.model_price(UNPRICED) is None
    server.script(text_reply("local answer", usage=Usage(500, 20, cached_tokens=100)))
    result = await call(server, UNPRICED)
    assert result.text == "local answer"
    assert (result.prompt_tokens, result.completion_tokens, result.cached_tokens) == (500, 20, 100)
    assert result.cost_usd is None
    assert server.requests[0].model == "my-local-model"


# --- how tower finds the server ------------------------------------------------------------

FILES = {"ws/readme.txt": "hello\n", "ws/data.csv": "a,b\n1,2\n"}


def project_toml(
    server: FakeOpenAI,
    cascade: list[str],
    *,
    max_retries: int = 3,
    call_timeout_s: float = 20.0,
    api_key_env: str | None = None,
) -> str:
    """One agent with `cascade`, one task, every model of it served by the fake server."""
    toml = f"""
[project]
name = "openai-path"
retry_backoff_s = 0
max_retries = {max_retries}
call_timeout_s = {call_timeout_s}

[[agents]]
name = "a"
cascade = {json.dumps(cascade)}
tools = ["list_dir", "finish"]
max_tokens = 256

[[tasks]]
id = "t"
agent = "a"
prompt = "How many files are in the workspace?"
workspace = "ws"
"""
    for model in cascade:
        toml += f'\n[models."{model}"]\napi_base = "{server.base_url}"\n'
        if api_key_env:
            toml += f'api_key_env = "{api_key_env}"\n'
    return toml


async def test_check_model_needs_no_openai_key_for_a_local_server(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = llm.check_model(MODEL)
    assert missing is not None and "OPENAI_API_KEY" in missing
    # A name litellm does not know is a typo, unless a server of the user's own serves it.
    unknown = llm.check_model(UNPRICED)
    assert unknown is not None and unknown.startswith("unknown model 'openai/my-local-model'")
    assert llm.check_model(UNPRICED, api_base=server.base_url) is None
    needs = llm.check_model(UNPRICED, server.base_url, "LOCAL_LLM_KEY")
    assert needs is not None and "LOCAL_LLM_KEY" in needs
    monkeypatch.setenv("LOCAL_LLM_KEY", "local-secret")
    assert llm.check_model(UNPRICED, server.base_url, "LOCAL_LLM_KEY") is None


async def test_project_api_base_reaches_the_server_and_beats_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, live_factory: Callable[..., Any]
) -> None:
    # litellm's own variable points nowhere: only the project's api_base can succeed.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    server.script(finish_reply("local"))
    live: Live = await live_factory(project_toml(server, [UNPRICED]), FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    assert live.kinds("t", EventKind.LLM_FAILED) == []
    [req] = server.requests
    assert req.model == "my-local-model"
    assert req.headers["authorization"] == "Bearer none"  # no key needed, none invented


async def test_project_api_key_env_is_sent_as_the_bearer_key(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, live_factory: Callable[..., Any]
) -> None:
    monkeypatch.setenv("LOCAL_LLM_KEY", "local-secret-123")
    server.script(finish_reply("keyed"))
    toml = project_toml(server, [MODEL], api_key_env="LOCAL_LLM_KEY")
    live: Live = await live_factory(toml, FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    assert server.requests[0].headers["authorization"] == "Bearer local-secret-123"


@pytest.mark.parametrize("var", ["OPENAI_BASE_URL", "OPENAI_API_BASE"])
async def test_without_api_base_litellm_takes_the_base_url_from_the_environment(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    """A model with no api_base goes where litellm's variables say (both names work)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv(var, server.base_url)
    server.script(text_reply("via " + var, usage=Usage(10, 2)))
    result = await llm.stream_call(MODEL, MSGS, None, 64, 20.0, lambda _t: None)
    assert result.text == "via " + var
    [req] = server.requests
    assert req.headers["authorization"] == f"Bearer {KEY}"


# --- the whole agent loop ----------------------------------------------------------------


def finish_reply(answer: str, usage: Usage | None = None, call_id: str = "call_fin") -> Reply:
    return tool_reply("finish", {"answer": answer}, call_id, usage=usage or Usage(700, 25))


def reasons(live: Live, tid: str) -> list[str]:
    return [e.payload["reason"] for e in live.kinds(tid, EventKind.THREAD_STATE)]


async def test_loop_tool_call_then_finish_costs_what_litellm_says(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    first, second = Usage(900, 40, cached_tokens=512), Usage(1_100, 30)
    server.script(
        tool_reply("list_dir", {"path": "."}, "call_ls", text="Looking.", usage=first),
        finish_reply("two files", second),
    )
    live: Live = await live_factory(project_toml(server, [MODEL]), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE and view.answer == "two files"

    finished = live.kinds("t", EventKind.LLM_FINISHED)
    assert [f.payload["model"] for f in finished] == [MODEL, MODEL]
    for ev, usage in zip(finished, (first, second), strict=True):
        p = ev.payload
        assert p["usage"]["prompt_tokens"] == usage.prompt_tokens
        assert p["usage"]["completion_tokens"] == usage.completion_tokens
        assert p["usage"]["cached_tokens"] == (usage.cached_tokens or 0)
        assert p["price_known"] is True
        assert p["cost_usd"] > 0
        assert p["cost_usd"] == pytest.approx(await reference_cost(server, MODEL, usage), rel=1e-12)
    assert finished[0].payload["tool_calls"][0]["function"]["name"] == "list_dir"
    total = sum(f.payload["cost_usd"] for f in finished)
    assert live.bus.state.budget.spent_usd == pytest.approx(total, rel=1e-12)
    assert live.bus.state.budget.unpriced_tokens == 0 and view.unpriced is False
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)

    loop_requests = server.requests[:2]
    assert [r.model for r in loop_requests] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert all(r.stream and r.include_usage for r in loop_requests)
    assert [t["function"]["name"] for t in loop_requests[0].tools or []] == ["list_dir", "finish"]
    # The tool's result went back to the server with the call's id.
    tool_msgs = [m for m in loop_requests[1].messages if m["role"] == "tool"]
    assert len(tool_msgs) == 1 and tool_msgs[0]["tool_call_id"] == "call_ls"
    assert "readme.txt" in tool_msgs[0]["content"] and "data.csv" in tool_msgs[0]["content"]
    assistant = [m for m in loop_requests[1].messages if m["role"] == "assistant"]
    assert assistant[0]["tool_calls"][0]["id"] == "call_ls"


async def test_loop_with_an_unpriced_model_counts_its_tokens_as_unpriced(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.script(
        tool_reply("list_dir", {}, "call_ls", usage=Usage(800, 20)),
        finish_reply("two files", Usage(900, 15)),
    )
    live: Live = await live_factory(project_toml(server, [UNPRICED]), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE
    finished = live.kinds("t", EventKind.LLM_FINISHED)
    assert len(finished) == 2
    assert all(f.payload["price_known"] is False for f in finished)
    assert all(f.payload["cost_usd"] == 0 for f in finished)
    assert live.bus.state.budget.unpriced_tokens == 800 + 20 + 900 + 15
    assert view.unpriced is True and view.tokens == 1_735
    assert [r.model for r in server.requests] == ["my-local-model"] * 2


# --- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "label"),
    [
        (
            error_reply(
                429,
                "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3.",
                "requests",
                "rate_limit_exceeded",
                headers={"retry-after": "0"},
            ),
            "rate limited (429)",
        ),
        (error_reply(500, "The server had an error while processing your request."), "(500)"),
        (error_reply(503, "The engine is currently overloaded."), "provider overloaded (503)"),
    ],
    ids=["429", "500", "503"],
)
async def test_retryable_http_errors_are_retried_then_succeed(
    server: FakeOpenAI, live_factory: Callable[..., Any], failure: Reply, label: str
) -> None:
    server.script(failure, finish_reply("fine"))
    live: Live = await live_factory(project_toml(server, [MODEL]), FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    assert failed.payload["retryable"] is True
    assert failed.payload["error"].startswith(f"{MODEL}: ") and label in failed.payload["error"]
    assert "retrying (1/3)" in reasons(live, "t")
    assert len(server.requests) == 2  # one per attempt: no hidden SDK retry
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)


async def test_authentication_failure_is_not_retried(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.script(
        error_reply(
            401,
            "Incorrect API key provided: sk-fake-***ests. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )
    )
    live: Live = await live_factory(project_toml(server, [MODEL]), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.FAILED
    assert "authentication failed" in view.reason
    assert "\n" not in view.reason and "Traceback" not in view.reason
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    assert failed.payload["retryable"] is False
    assert not any(r.startswith("retrying") for r in reasons(live, "t"))
    assert len(server.requests) == 1


async def test_a_slow_answer_times_out_and_the_retry_succeeds(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    # The first answer would take an hour; the client gives up after call_timeout_s, which is
    # short, yet far more than the retry's answer takes to arrive on a slow machine.
    server.script(text_reply("too late", delay_headers_s=3600), finish_reply("in time"))
    live: Live = await live_factory(project_toml(server, [MODEL], call_timeout_s=2.0), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE and view.answer == "in time"
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    assert failed.payload["error"] == f"{MODEL}: no answer within the call timeout"
    assert failed.payload["retryable"] is True
    assert "retrying (1/3)" in reasons(live, "t")
    # The abandoned request's connection was closed, not left hanging.
    await server.wait_for(lambda: server.disconnects == 1)
    assert len(server.requests) == 2


async def test_a_stream_that_stalls_midway_times_out(server: FakeOpenAI) -> None:
    # The headers and the first chunk come at once, then the stream stalls for an hour: the
    # call timeout ends it. Short, yet far more than the request needs to reach the server
    # on a slow machine, so what it cuts is the stall.
    server.script(
        text_reply("a long story", usage=Usage(10, 5), delay_chunks_s=3600),
        text_reply("next", usage=Usage(10, 1)),
    )
    pieces: list[str] = []
    with pytest.raises(llm.CallError) as err:
        await call(server, timeout_s=2.0, on_text=pieces.append)
    assert str(err.value) == f"{MODEL}: no answer within the call timeout"
    assert err.value.retryable is True and err.value.context_window is False
    assert "".join(pieces) == ""  # the stall came before the first text chunk
    # The client walked away during the pause between chunks (the only pause this reply
    # has), that is after the headers: midway, not on the way there.
    await server.wait_for(lambda: server.disconnects == 1)
    assert (await call(server)).text == "next"  # the client is still usable


# --- context window ----------------------------------------------------------------------


async def test_context_length_exceeded_is_a_context_window_error(server: FakeOpenAI) -> None:
    server.script(context_length_reply())
    with pytest.raises(llm.CallError) as err:
        await call(server)
    assert err.value.context_window is True and err.value.retryable is False
    assert str(err.value).startswith(f"{MODEL}: context window exceeded (")
    assert "\n" not in str(err.value)
    assert len(server.requests) == 1


@pytest.mark.parametrize("max_retries", [3, 0])
async def test_context_window_escalates_to_the_next_model(
    server: FakeOpenAI, live_factory: Callable[..., Any], max_retries: int
) -> None:
    """A prompt too long for the first model goes to the second. Escalating is not a retry,
    so it must work with max_retries = 0 too."""
    server.script(context_length_reply(), finish_reply("fits now"))
    toml = project_toml(server, [MODEL, "openai/gpt-4o"], max_retries=max_retries)
    live: Live = await live_factory(toml, FILES)
    await live.waiter.until(ended(live, "t"))
    [esc] = live.kinds("t", EventKind.ESCALATED)
    assert esc.payload["from_model"] == MODEL and esc.payload["to_model"] == "openai/gpt-4o"
    assert esc.payload["trigger"] == f"context window exceeded on {MODEL}"
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    assert failed.payload["retryable"] is False
    assert [r.model for r in server.requests] == ["gpt-4o-mini", "gpt-4o"]
    view = live.view("t")
    assert (view.state, view.reason, view.answer) == (ThreadState.DONE, "finished", "fits now")
    [finished] = live.kinds("t", EventKind.LLM_FINISHED)
    assert finished.payload["model"] == "openai/gpt-4o"


# --- litellm stays quiet -------------------------------------------------------------------


async def test_litellm_prints_nothing_on_failure_or_success(
    server: FakeOpenAI, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    server.script(
        error_reply(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
        error_reply(500, "The server had an error while processing your request."),
        context_length_reply(),
        text_reply("fine", usage=Usage(10, 2)),
    )
    for _ in range(3):
        with pytest.raises(llm.CallError):
            await call(server)
    assert (await call(server)).text == "fine"
    out, err = capfd.readouterr()
    assert out == "" and err == ""


async def test_a_rate_limit_waits_as_long_as_retry_after_says(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    server.script(
        error_reply(
            429,
            "Rate limit reached.",
            "requests",
            "rate_limit_exceeded",
            headers={"retry-after": "0.5"},
        ),
        finish_reply("fine"),
    )
    live: Live = await live_factory(project_toml(server, [MODEL]), FILES)  # backoff 0
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    second = live.kinds("t", EventKind.LLM_STARTED)[1]
    assert second.ts - failed.ts >= 0.45


async def test_a_price_in_the_project_prices_a_model_litellm_does_not_know(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """`input_usd_per_mtok` / `output_usd_per_mtok` / `cached_input_usd_per_mtok` on a real
    (local) model: registered with litellm, so a call costs exactly those rates, cached
    tokens included, as litellm's own cost function computes them."""
    model = "openai/priced-local-model"
    toml = project_toml(server, [model]) + (
        "input_usd_per_mtok = 2.0\noutput_usd_per_mtok = 8.0\ncached_input_usd_per_mtok = 0.5\n"
    )
    usage = Usage(1_000, 50, cached_tokens=400)
    server.script(finish_reply("two files", usage))
    live: Live = await live_factory(toml, FILES)
    await live.waiter.until(ended(live, "t"))
    (fin,) = live.kinds("t", EventKind.LLM_FINISHED)
    p = fin.payload
    assert p["price_known"] is True
    want = (600 * 2.0 + 400 * 0.5 + 50 * 8.0) / 1e6
    assert p["cost_usd"] == pytest.approx(want, rel=1e-9)
    assert live.bus.state.budget.unpriced_tokens == 0
    # The reservation priced the worst case at the same rates (not at $0).
    (start,) = live.kinds("t", EventKind.LLM_STARTED)
    assert start.payload["reserved_usd"] > 0


# --- caps hold whatever the provider's tokenizer ----------------------------------------------


async def test_caps_hold_against_a_tokenizer_counting_four_times_the_estimate(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """A server whose tokenizer counts 4x tower's chars/4 estimate (CJK text does this), with
    200 calls in flight: reservations use a bound no tokenizer exceeds, so the session ends
    at or under its cap (before: +34 %), and threads stop on the budget instead."""
    from tower.core.tokens import estimate_tokens

    model = "openai/cjk-local-model"

    def heavy(req: Any) -> Any:
        prompt = 4 * estimate_tokens(req.messages, req.tools)  # what this tokenizer counts
        return finish_reply("处理完毕", Usage(prompt, 40), call_id=f"call_{len(server.requests)}")

    server.fallback = heavy
    cap = 1.0
    toml = (
        project_toml(server, [model], max_retries=0)
        .replace('id = "t"', 'id = "t"\nrepeat = 200')
        .replace("max_tokens = 256", "max_tokens = 64")  # the prompt dominates the worst case
        .replace(
            "[[agents]]", f"[budget]\nusd = {cap}\n\n[limits]\nmax_concurrent = 200\n\n[[agents]]"
        )
        .replace("How many files are in the workspace?", "总结工作区中的文件。" * 40)
    )
    toml += "input_usd_per_mtok = 20.0\noutput_usd_per_mtok = 80.0\n"
    live: Live = await live_factory(toml, FILES, approve="none")
    await live.waiter.until(
        lambda: len(live.bus.state.threads) == 200 and live.bus.state.all_ended, timeout=120
    )
    state = live.bus.state
    assert state.budget.spent_usd <= cap + 1e-12, state.budget.spent_usd
    assert state.budget.reserved_usd == pytest.approx(0, abs=1e-12)
    done = state.count(ThreadState.DONE)
    stopped = [t for t in state.threads.values() if t.reason == "budget"]
    assert done > 0 and stopped, (done, len(stopped))  # the cap, not a crash, ended the rest
    for f in [e for e in live.events if e.kind is EventKind.LLM_FINISHED]:
        # Every call's real usage fitted in what it had reserved.
        assert f.payload["cost_usd"] <= f.payload["reserved_usd"] + 1e-12


# --- sub-agents over a real HTTP path -------------------------------------------------------

TREE = """
[project]
name = "tree"
retry_backoff_s = 0
max_retries = 0

[policy]
allow = ["spawn_agent"]

[models."openai/gpt-4o-mini"]
api_base = "{url}"

[[agents]]
name = "lead"
system_prompt = "LEAD: split the work."
cascade = ["openai/gpt-4o-mini"]
tools = ["spawn_agent", "wait_agents", "finish"]
max_tokens = 256

[[agents]]
name = "child"
system_prompt = "CHILD: do your part."
cascade = ["openai/gpt-4o-mini"]
tools = ["finish"]
max_tokens = 256

[[tasks]]
id = "lead"
agent = "lead"
prompt = "Ask two helpers, then merge."
{budget}
"""


def _tree_route(req: Any) -> Reply:
    """The lead spawns two children and waits for them in one reply, then merges; each
    child answers at once. Routed by the request itself: the calls interleave."""
    system = req.messages[0]["content"]
    if system.startswith("CHILD"):
        part = req.messages[1]["content"]
        return finish_reply(f"{part}: done", Usage(150, 20), call_id="call_child")
    if not any(m["role"] == "assistant" for m in req.messages):
        # Two spawns and the wait in one reply: the lead makes no call while they run.
        calls = [
            ScriptedCall(
                f"call_s{k}", "spawn_agent", json.dumps({"prompt": f"part {k}", "agent": "child"})
            )
            for k in (1, 2)
        ]
        calls.append(ScriptedCall("call_wait", "wait_agents", "{}"))
        return Reply(tool_calls=calls, usage=Usage(1400, 60))
    last = next(m["content"] for m in reversed(req.messages) if m["role"] == "tool")
    return finish_reply(f"merged: {last}", Usage(1000, 30))


async def test_sub_agents_over_http_spend_what_litellm_prices_within_the_leads_cap(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """A lead and its two children on gpt-4o-mini through litellm's OpenAI provider and a
    real HTTP server: two spawn_agent calls (and the wait) in one streamed reply; each
    call is priced by litellm; the lead's subtree is exactly their sum. Then the same tree
    under a lead cap that fits its own call and one child's: the other child is refused by
    the lead's cap (not its own, which it does not have), and the subtree never passes it."""
    server.fallback = _tree_route
    live: Live = await live_factory(TREE.format(url=server.base_url, budget=""))
    await live.waiter.until(ended(live, "lead", "lead.1", "lead.2"))
    threads = live.bus.state.threads
    assert {t: v.state for t, v in threads.items()} == dict.fromkeys(
        ["lead", "lead.1", "lead.2"], ThreadState.DONE
    )
    assert "part 1: done" in (threads["lead"].answer or "")
    assert "part 2: done" in (threads["lead"].answer or "")
    finished = [e for e in live.events if e.kind is EventKind.LLM_FINISHED]
    for ev in finished:
        usage = Usage(
            ev.payload["usage"]["prompt_tokens"], ev.payload["usage"]["completion_tokens"]
        )
        assert ev.payload["cost_usd"] == pytest.approx(
            await reference_cost(server, MODEL, usage), rel=1e-12
        )
    total = sum(e.payload["cost_usd"] for e in finished)
    assert threads["lead"].subtree_usd == pytest.approx(total, rel=1e-12)
    assert live.sup.ledger.threads["lead"].spent_usd == pytest.approx(total, rel=1e-12)
    assert {r.model for r in server.requests} == {"gpt-4o-mini"}

    first = next(e.payload for e in finished if e.thread == "lead")
    child = next(
        e.payload for e in live.events if e.kind is EventKind.LLM_STARTED and e.thread == "lead.1"
    )
    child_cost = next(e.payload["cost_usd"] for e in finished if e.thread == "lead.1")
    cap = first["cost_usd"] + child["reserved_usd"] + child_cost / 2
    capped: Live = await live_factory(
        TREE.format(url=server.base_url, budget=f"budget_usd = {cap!r}"), approve="none"
    )

    def watch(_ev: Any) -> None:
        acct = capped.sup.ledger.threads.get("lead")
        if acct is not None:
            assert acct.spent_usd + acct.reserved_usd <= cap + 1e-15

    capped.bus.subscribe(watch)
    await capped.waiter.until(ended(capped, "lead", "lead.1", "lead.2"))
    refused = [
        (e.thread, e.payload["scope"], e.payload.get("account"))
        for e in capped.events
        if e.kind is EventKind.INBOX_OPENED and e.payload["kind"] == "budget"
    ]
    assert any(r[1:] == ("subtree", "lead") for r in refused if r[0] != "lead"), refused
    assert capped.bus.state.threads["lead"].subtree_usd <= cap + 1e-15
    assert capped.bus.state.threads["lead"].subtree_usd > first["cost_usd"]  # a child ran
