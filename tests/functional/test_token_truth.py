"""Token truth: a provider that sends no usage gets the model's own count, marked estimated.

llama.cpp's server sends no usage in its streams; litellm then fills in a usage chunk of its
own, counted with a tokenizer it guesses, and nothing says so. tower tells the two apart
(litellm's stream wrapper keeps the provider's raw chunks), counts with the project's
tokenizer (a tokenizer.json, or the GGUF file the server loads) and marks the call
estimated, in the log, the transcript, the CSV export and the summaries.

The tokenizer here is a Hugging Face word-level one built in the test (every word one token),
so a count that went through it is told apart from tiktoken's or chars/4. The GGUF reader
is checked on a small GGUF file written byte by byte; tests/cli/test_real_model.py checks it
against llama.cpp's own tokenizer.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from tests.conftest import Live, ended
from tests.fake_openai import FakeOpenAI, Usage, text_reply, tool_reply
from tests.functional.test_openai_path import FILES, UNPRICED, call, project_toml, server
from tests.helpers import write_project
from tower.core import llm
from tower.core.events import EventKind, ThreadState
from tower.core.gguf import read_gguf_metadata, tokenizer_json_from_gguf
from tower.core.project import ProjectError, load_project

__all__ = ["server"]  # the fixture, shared with the OpenAI-path tests

WORDS = ["[UNK]", "how", "many", "files", "are", "in", "the", "workspace", "?", "three", "two"]


def word_tokenizer() -> str:
    """A tokenizer.json counting one token per word (and per punctuation mark)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def words(tmp_path: Path) -> Any:
    """The word-level tokenizer, loaded from a tokenizer.json as a project's would be."""
    path = tmp_path / "words.json"
    path.write_text(word_tokenizer(), encoding="utf-8")
    return llm.load_tokenizer(str(path))


async def test_a_stream_without_usage_is_counted_by_the_given_tokenizer_and_marked(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    server.script(text_reply("there are three files in the workspace", usage=None))
    result = await call(server, UNPRICED, tokenizer=words(tmp_path))
    assert result.usage_estimated
    assert result.completion_tokens == 7  # seven words, not chars/4 (10) nor tiktoken's
    assert result.prompt_tokens > 0


async def test_a_stream_with_usage_keeps_the_providers_figures(
    server: FakeOpenAI, tmp_path: Path
) -> None:
    server.script(text_reply("three files", usage=Usage(41, 3)))
    result = await call(server, UNPRICED, tokenizer=words(tmp_path))
    assert not result.usage_estimated
    assert (result.prompt_tokens, result.completion_tokens) == (41, 3)


async def test_without_a_tokenizer_litellms_count_is_still_marked_estimated(
    server: FakeOpenAI,
) -> None:
    """The bug this replaces: litellm's invented usage passed as the provider's."""
    server.script(text_reply("there are three files in the workspace", usage=None))
    result = await call(server, UNPRICED)
    assert result.usage_estimated and result.completion_tokens > 0


async def test_the_whole_path_records_shows_and_exports_estimated_usage(
    server: FakeOpenAI, live_factory: Callable[..., Any]
) -> None:
    from tower.core.replay import export_csv
    from tower.core.state import summary
    from tower.ui.screens.detail import transcript_lines

    server.script(
        tool_reply("list_dir", {"path": "."}, "c1", usage=None),
        tool_reply("finish", {"answer": "two"}, "c2", usage=None),
    )
    toml = project_toml(server, [UNPRICED]) + 'tokenizer = "words.json"\n'
    toml += "input_usd_per_mtok = 1.0\noutput_usd_per_mtok = 2.0\n"
    live: Live = await live_factory(toml, {**FILES, "words.json": word_tokenizer()})
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE
    finished = live.kinds("t", EventKind.LLM_FINISHED)
    assert len(finished) == 2
    for ev in finished:
        usage = ev.payload["usage"]
        assert usage["estimated"] is True
        assert ev.payload["cost_usd"] == pytest.approx(
            (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
        )
    total = sum(e.payload["usage"]["total_tokens"] for e in finished)
    assert live.view("t").estimated_tokens == total == live.bus.state.budget.estimated_tokens
    assert summary(live.bus.state)["estimated_tokens"] == total
    head = transcript_lines(finished[0], False)[0].plain
    assert "~" in head and "estimated" in head
    await live.store.flush()
    out = io.StringIO()
    await export_csv(live.store, live.sup.session_id, out)
    (row,) = csv.DictReader(io.StringIO(out.getvalue()))
    assert int(row["estimated_tokens"]) == total


# --- the project's tokenizer key ----------------------------------------------------------


def _project(tmp_path: Path, tokenizer: str, files: dict[str, str | bytes]) -> Path:
    toml = f"""
[project]
name = "tok"
[models."openai/local"]
api_base = "http://127.0.0.1:9/v1"
tokenizer = {json.dumps(tokenizer)}
[[agents]]
name = "a"
cascade = ["openai/local"]
[[tasks]]
id = "t"
agent = "a"
prompt = "p"
"""
    return write_project(tmp_path / "p", toml, files)


@pytest.mark.parametrize(
    ("tokenizer", "files", "says"),
    [
        ("missing.json", {}, "no such file 'missing.json'"),
        ("bad.json", {"bad.json": "{not json"}, "is not a Hugging Face tokenizer.json"),
        ("model.gguf", {"model.gguf": b"GGUF\x03\x00\x00\x00" + b"\x00" * 3}, "damaged GGUF"),
        ("model.gguf", {"model.gguf": b"PK\x03\x04 not a gguf at all"}, "not a GGUF file"),
        ("", {}, "expected a file path"),
    ],
)
def test_a_bad_tokenizer_is_one_line_naming_the_key(
    tmp_path: Path, tokenizer: str, files: dict[str, str | bytes], says: str
) -> None:
    root = _project(tmp_path, tokenizer, files)
    with pytest.raises(ProjectError) as err:
        load_project(root)
    (line,) = [p for p in err.value.problems if "tokenizer" in p]
    assert line.startswith(f"{root / 'tower.toml'}: models.openai/local.tokenizer: "), line
    assert says in line and "\n" not in line, line


# --- the GGUF reader ----------------------------------------------------------------------


def _gguf(meta: dict[str, Any]) -> bytes:
    """A GGUF v3 file with this metadata and no tensors."""

    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    for key, value in meta.items():
        out += string(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + string(value)
        elif isinstance(value, list) and value and isinstance(value[0], str):
            out += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(string(v) for v in value)
        elif isinstance(value, list):
            out += struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value)
        else:
            out += struct.pack("<II", 4, value)
    return out + b"\x00" * 64  # tensor data would follow


def test_a_gguf_tokenizer_is_rebuilt_from_the_header(tmp_path: Path) -> None:
    tokens = ["a", "b", "ab", "Ġ", "Ġab", "<|im_start|>", "1", "2"]
    path = tmp_path / "m.gguf"
    path.write_bytes(
        _gguf(
            {
                "general.architecture": "llama",
                "tokenizer.ggml.model": "gpt2",
                "tokenizer.ggml.pre": "smollm",
                "tokenizer.ggml.tokens": tokens,
                "tokenizer.ggml.merges": ["a b", "Ġ ab"],
                "tokenizer.ggml.token_type": [1, 1, 1, 1, 1, 3, 1, 1],
            }
        )
    )
    meta = read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.tokens"] == tokens
    tok = Tokenizer.from_str(tokenizer_json_from_gguf(path))
    ids = tok.encode("<|im_start|>ab ab12").ids
    # The control token whole, the merges applied, every digit on its own ("smollm").
    assert [tokens[i] for i in ids] == ["<|im_start|>", "ab", "Ġab", "1", "2"]


def test_a_gguf_with_another_tokenizer_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}))
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model is 'llama'"):
        tokenizer_json_from_gguf(path)
