"""Provider prompt caching: breakpoints where a provider takes them, a prefix that only grows
where it caches on its own, and "saved by caching" priced from litellm's cost map.

The counterparts are real HTTP: tests/fake_openai.py speaks OpenAI's chat API (reporting
cached tokens) and Anthropic's Messages API (reporting cache reads and writes), reached
through litellm's own `openai/` and `anthropic/` providers. The sim models cache the way
OpenAI does (tower/core/sim.py), so the offline demo shows the saving too.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Live, ended
from tests.fake_openai import FakeOpenAI, Reply, ScriptedCall, Usage
from tests.helpers import REPO
from tower.core import llm
from tower.core.events import EventKind, ThreadState
from tower.core.project import load_project
from tower.core.session import run_headless

CLAUDE = "anthropic/claude-haiku-4-5"
GPT = "openai/gpt-4o-mini"
KEY_ENV = "TOWER_TEST_PROVIDER_KEY"
FILES = {"ws/readme.txt": "hello\n", "ws/notes.md": "# notes\n"}
SYSTEM = "You count files carefully. " * 40


@pytest.fixture
def server(fake_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> FakeOpenAI:
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-real-key")
    return fake_server


def _project(model: str, api_base: str, prompt_cache: bool = True) -> str:
    return f"""
[project]
name = "caching"
retry_backoff_s = 0

[cache]
prompt = {json.dumps(prompt_cache)}

[[agents]]
name = "a"
system_prompt = "{SYSTEM}"
cascade = ["{model}"]
tools = ["list_dir", "read_file", "finish"]
max_tokens = 256

[[tasks]]
id = "t"
agent = "a"
prompt = "How many files are in the workspace?"
workspace = "ws"

[models."{model}"]
api_base = "{api_base}"
api_key_env = "{KEY_ENV}"
"""


def _script(server: FakeOpenAI, usages: list[Usage]) -> None:
    first, second, third = usages
    server.script(
        Reply(
            text="Listing.",
            tool_calls=[ScriptedCall("call_ls", "list_dir", '{"path": "."}')],
            usage=first,
        ),
        Reply(
            text="Reading.",
            tool_calls=[ScriptedCall("call_rd", "read_file", '{"path": "readme.txt"}')],
            usage=second,
        ),
        Reply(
            tool_calls=[ScriptedCall("call_fin", "finish", '{"answer": "two files"}')],
            usage=third,
        ),
    )


async def test_anthropic_gets_breakpoints_and_reads_and_writes_are_priced(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """Claude through litellm's anthropic provider: the request marks the system prompt and
    the last tool definition `cache_control: ephemeral`; the usage's cache reads and writes
    are priced as litellm's map prices them, and the saving is what plain input would have
    cost minus that (a write costs more than plain input: a negative share)."""
    usages = [
        Usage(3_000, 20, cached_tokens=0, cache_write_tokens=2_600),
        Usage(3_200, 20, cached_tokens=2_600, cache_write_tokens=0),
        Usage(3_400, 15, cached_tokens=2_600, cache_write_tokens=512),
    ]
    _script(server, usages)
    live: Live = await live_factory(_project(CLAUDE, f"http://127.0.0.1:{server.port}"), FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE and live.view("t").answer == "two files"

    assert [r.path for r in server.requests] == ["/v1/messages"] * 3
    for req in server.requests:
        (system,) = req.body["system"]
        assert system["cache_control"] == {"type": "ephemeral"}
        assert system["text"].startswith("You count files carefully.")
        tools = req.body["tools"]
        assert [t["name"] for t in tools] == ["list_dir", "read_file", "finish"]
        assert tools[-1]["cache_control"] == {"type": "ephemeral"}
        assert all("cache_control" not in t for t in tools[:-1])
        assert req.headers.get("x-api-key") == "sk-test-not-a-real-key"
    # The recorded conversation is what the thread said, without the request's markings.
    started = live.kinds("t", EventKind.LLM_STARTED)
    assert "cache_control" not in json.dumps([e.payload for e in started])

    info = llm.load_litellm().get_model_info(CLAUDE)
    inp, out = info["input_cost_per_token"], info["output_cost_per_token"]
    read, write = info["cache_read_input_token_cost"], info["cache_creation_input_token_cost"]
    assert read < inp < write
    finished = live.kinds("t", EventKind.LLM_FINISHED)
    for ev, u in zip(finished, usages, strict=True):
        p = ev.payload
        r, w = u.cached_tokens or 0, u.cache_write_tokens or 0
        assert p["usage"]["cached_tokens"] == r and p["usage"]["cache_write_tokens"] == w
        assert p["usage"]["prompt_tokens"] == u.prompt_tokens
        plain = u.prompt_tokens - r - w
        assert p["cost_usd"] == pytest.approx(
            plain * inp + r * read + w * write + u.completion_tokens * out, rel=1e-9
        )
        assert p["saved_usd"] == pytest.approx(r * (inp - read) - w * (write - inp), rel=1e-9)
    assert finished[0].payload["saved_usd"] < 0 < finished[1].payload["saved_usd"]
    total = sum(e.payload["saved_usd"] for e in finished)
    assert live.view("t").saved_usd == pytest.approx(total, rel=1e-12)
    assert live.bus.state.budget.saved_usd == pytest.approx(total, rel=1e-12)


async def test_caching_off_sends_no_breakpoints(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    _script(server, [Usage(3_000, 20), Usage(3_200, 20), Usage(3_400, 15)])
    toml = _project(CLAUDE, f"http://127.0.0.1:{server.port}", prompt_cache=False)
    live: Live = await live_factory(toml, FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    assert len(server.requests) == 3
    assert "cache_control" not in json.dumps([r.body for r in server.requests])
    assert live.bus.state.budget.saved_usd == 0


async def test_openai_is_sent_a_prefix_that_only_grows_and_cached_reads_are_saved(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    """OpenAI caches a repeated prefix on its own: each request of a thread begins with
    the previous request's messages, byte for byte, and the same tools; no breakpoint is
    sent. The cached tokens the server reports are priced from litellm's map."""
    usages = [Usage(1_500, 20), Usage(1_700, 20, cached_tokens=1_408), Usage(1_900, 15, 1_664)]
    _script(server, usages)
    live: Live = await live_factory(_project(GPT, server.base_url), FILES)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    reqs = server.requests
    assert len(reqs) == 3
    for before, after in itertools.pairwise(reqs):
        n = len(before.messages)
        assert len(after.messages) > n
        assert json.dumps(after.messages[:n]) == json.dumps(before.messages)
        assert json.dumps(after.tools) == json.dumps(before.tools)
    assert "cache_control" not in json.dumps([r.body for r in reqs])

    info = llm.load_litellm().get_model_info(GPT)
    inp, read = info["input_cost_per_token"], info["cache_read_input_token_cost"]
    finished = live.kinds("t", EventKind.LLM_FINISHED)
    saved = [e.payload["saved_usd"] for e in finished]
    assert saved[0] == 0
    assert saved[1] == pytest.approx(1_408 * (inp - read), rel=1e-9)
    assert saved[2] == pytest.approx(1_664 * (inp - read), rel=1e-9)
    assert live.bus.state.budget.saved_usd == pytest.approx(sum(saved), rel=1e-12)


async def test_the_sims_cache_saves_exactly_what_the_uncached_run_pays_more(
    tmp_path: Path,
) -> None:
    """The demo, cached and not: the same answers and tokens, and the cached run's cost
    plus its recorded saving is the uncached run's cost, to the cent's millionth."""
    src = REPO / "sample_projects" / "tax_return"
    on, off = tmp_path / "on", tmp_path / "off"
    shutil.copytree(src, on)
    shutil.copytree(src, off)
    with (off / "tower.toml").open("a") as f:
        f.write("\n[cache]\nprompt = false\n")
    cached = await run_headless(load_project(on), tmp_path / "on.db", "all", None)
    plain = await run_headless(load_project(off), tmp_path / "off.db", "all", None)
    answers = {t: v.answer for t, v in cached.state.threads.items()}
    assert answers == {t: v.answer for t, v in plain.state.threads.items()}
    assert cached.summary["threads"]["done"] == 5
    assert cached.summary["tokens"] == plain.summary["tokens"]
    saved = cached.state.budget.saved_usd
    assert saved > 0 and plain.state.budget.saved_usd == 0
    assert "saved_by_caching_usd" not in plain.summary
    assert cached.summary["saved_by_caching_usd"] == round(saved, 6)
    assert cached.state.budget.spent_usd + saved == pytest.approx(
        plain.state.budget.spent_usd, rel=1e-9
    )
    for tid, view in cached.state.threads.items():
        assert view.cost_usd + view.saved_usd == pytest.approx(
            plain.state.threads[tid].cost_usd, rel=1e-9
        )


# --- from the orchestrator's seat -------------------------------------------------------------

SEAT = f"""
[project]
name = "seat"
retry_backoff_s = 0

[[agents]]
name = "a"
system_prompt = "{SYSTEM * 6}"
cascade = ["sim/instant"]
tools = ["list_dir", "finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "List, then finish."
workspace = "ws"
repeat = 2

[[tasks.script]]
tool = "list_dir"
args = {{ path = "." }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "listed" }}
"""


async def test_the_bar_and_the_transcript_show_what_caching_saved(tmp_path: Path) -> None:
    """The person sees the session's saving in the budget bar and, on the thread they open
    with enter, each cached call's tokens and saving, as the log recorded them."""
    from textual.widgets import RichLog

    from tests.tui_harness import drawn, tui
    from tower.ui.format import usd
    from tower.ui.screens.detail import ThreadScreen

    async with tui(tmp_path, SEAT) as t:
        await t.until(lambda: t.state().threads and t.state().all_ended, "both threads end")
        await t.settle()
        saved = t.state().budget.saved_usd
        assert saved > 0
        assert f"saved {usd(saved)} by caching" in drawn(t.app.budget_bar)
        await t.press("down")
        chosen = t.threads.current
        assert chosen == "t-2"
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == chosen
        log = screen.query_one(RichLog)

        def transcript() -> str:
            return "\n".join(strip.text for strip in log.lines)

        await t.until(lambda: "step 2" in transcript(), "the transcript")
        events = await t.events(chosen)
        second = next(
            e for e in events if e.kind is EventKind.LLM_FINISHED and e.payload["step"] == 2
        )
        cached, step_saved = second.payload["usage"]["cached_tokens"], second.payload["saved_usd"]
        assert cached > 0 and step_saved > 0
        head = next(line for line in transcript().splitlines() if "step 2" in line)
        assert f"cached, saved {usd(step_saved)})" in head
        first = next(line for line in transcript().splitlines() if "step 1" in line)
        assert "cached" not in first  # the first call found the cache cold
        # The thread's own total, in the screen's head.
        from textual.widgets import Static

        head = drawn(screen.query_one("#head", Static))
        assert f"saved {usd(t.view(chosen).saved_usd)} by caching" in head
        assert t.view(chosen).saved_usd >= step_saved
