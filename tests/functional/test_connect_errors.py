"""A call that never reaches a server says so, naming where it went: not "provider error (500)",
which is how litellm reports a refused connection. Checked through the real `openai/` path
(litellm → its HTTP client → a socket) at a local port nothing listens on."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Live
from tower.core import llm
from tower.core.events import EventKind, ThreadState

MODEL = "openai/my-local-model"


def closed_port() -> int:
    """A local port that was free a moment ago and now has no listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def project_toml(api_base: str, max_retries: int) -> str:
    return f"""
[project]
name = "unreachable"
retry_backoff_s = 0
max_retries = {max_retries}
call_timeout_s = 30

[[agents]]
name = "a"
cascade = ["{MODEL}"]
tools = ["finish"]
max_tokens = 64

[[tasks]]
id = "t"
agent = "a"
prompt = "Say hello."

[models."{MODEL}"]
api_base = "{api_base}"
"""


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)


async def test_a_refused_connection_names_the_api_base(
    live_factory: Callable[..., Any],
) -> None:
    base = f"http://127.0.0.1:{closed_port()}/v1"
    live: Live = await live_factory(project_toml(base, max_retries=1))
    await live.waiter.until(lambda: live.view("t").state.ended, timeout=60)
    view = live.view("t")
    expected = f"{MODEL}: cannot connect to {base} (connection refused)"
    assert view.state is ThreadState.FAILED
    assert view.reason == f"error: {expected}"
    failures = live.kinds("t", EventKind.LLM_FAILED)
    # A server that is starting may listen soon: refused calls are retried, then give up.
    assert [f.payload["error"] for f in failures] == [expected, expected]
    assert all(f.payload["retryable"] for f in failures)
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)


async def test_an_unknown_host_is_not_retried(live_factory: Callable[..., Any]) -> None:
    base = "http://no-such-host.invalid/v1"  # .invalid never resolves (RFC 6761)
    live: Live = await live_factory(project_toml(base, max_retries=3))
    await live.waiter.until(lambda: live.view("t").state.ended, timeout=60)
    view = live.view("t")
    assert view.state is ThreadState.FAILED
    assert view.reason == f"error: {MODEL}: cannot connect to {base} (host not found)"
    [failed] = live.kinds("t", EventKind.LLM_FAILED)
    assert failed.payload["retryable"] is False


def test_a_connect_timeout_without_api_base_names_the_url_tried() -> None:
    request = httpx.Request("POST", "https://api.example.test:8443/v1/chat/completions")
    try:
        try:
            raise httpx.ConnectTimeout("timed out", request=request)
        except httpx.ConnectTimeout as inner:
            raise openai.APIConnectionError(request=request) from inner
    except openai.APIConnectionError as exc:
        err = llm.read_error(exc, MODEL)
    assert (
        str(err)
        == f"{MODEL}: cannot connect to https://api.example.test:8443 (connection timed out)"
    )
    assert err.retryable is True


def test_a_server_that_answered_is_still_read_by_its_status() -> None:
    """Only failures to connect are read as such: an HTTP 500 keeps its label."""
    response = httpx.Response(500, request=httpx.Request("POST", "http://127.0.0.1:1/v1"))
    exc = openai.InternalServerError("boom", response=response, body=None)
    err = llm.read_error(exc, MODEL, "http://127.0.0.1:1/v1")
    assert "provider error (500)" in str(err) and "cannot connect" not in str(err)
