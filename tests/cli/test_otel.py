"""OpenTelemetry: a session's threads, model calls and tool calls as spans with the GenAI
semantic conventions, live (OTEL_EXPORTER_OTLP_ENDPOINT set) and afterwards (`tower export
--format otlp`). Checked with the SDK's in-memory exporter and against a local OTLP/HTTP
receiver that decodes what arrives with the protocol's own classes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.helpers import db_events, one_line_error, tower, write_project
from tests.otlp_receiver import OtlpReceiver, attrs
from tower.core.events import EventKind
from tower.core.otel import collect_spans

SECRET = "sk-live-0123456789abcdefSECRET"
FILES = {"ws/notes.txt": f"the key is {SECRET}\n"}
PROJECT = """
[project]
name = "traced"
retry_backoff_s = 0

[[agents]]
name = "a"
cascade = ["sim/instant", "sim/large"]
tools = ["read_file", "finish"]

[[tasks]]
id = "t"
agent = "a"
prompt = "Read notes.txt and report the key."
workspace = "ws"
repeat = 2

[[tasks.script]]
say = "Reading."
tool = "read_file"
args = { path = "notes.txt" }

[[tasks.script]]
tool = "read_file"
args = { path = "missing.txt" }

[[tasks.script]]
tool = "finish"
args = { answer = "{last_result}" }
"""
NO_OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def run(tmp_path: Path, env: dict[str, str] | None = None) -> tuple[Path, str]:
    root = write_project(tmp_path / "p", PROJECT, FILES)
    db = tmp_path / "t.db"
    proc = tower(
        "run", root, "--headless", "--approve", "all", "--json", "--db", db,
        env={"TRACED_KEY": SECRET, **(env or {})},
        unset=() if env else NO_OTEL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return db, json.loads(proc.stdout.strip().splitlines()[-1])["session"]


def test_spans_follow_the_log_with_genai_attributes(tmp_path: Path) -> None:
    db, session = run(tmp_path)
    events = db_events(db, session)
    spans = collect_spans(events, session)
    by_id = {s.context.span_id: s for s in spans}
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "tower session traced" and root.attributes["tower.session"] == session
    threads = {s.attributes["gen_ai.agent.id"]: s for s in spans if s.name == "invoke_agent a"}
    assert sorted(threads) == ["t-1", "t-2"]
    assert all(by_id[s.parent.span_id] is root for s in threads.values())

    finished = [e for e in events if e.kind is EventKind.LLM_FINISHED]
    chats = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "chat"]
    assert len(chats) == len(finished) == 6
    started = {e.payload["call"]: e for e in events if e.kind is EventKind.LLM_STARTED}
    for ev in finished:
        (span,) = [s for s in chats if s.attributes["tower.call"] == ev.payload["call"]]
        a = span.attributes
        assert span.name == f"chat {ev.payload['model']}" and span.kind.name == "CLIENT"
        assert a["gen_ai.system"] == "sim" and a["gen_ai.request.model"] == ev.payload["model"]
        assert a["gen_ai.response.model"] == ev.payload["model"]
        assert a["gen_ai.usage.input_tokens"] == ev.payload["usage"]["prompt_tokens"]
        assert a["gen_ai.usage.output_tokens"] == ev.payload["usage"]["completion_tokens"]
        assert a["tower.cost_usd"] == ev.payload["cost_usd"]
        assert span.start_time == int(started[ev.payload["call"]].ts * 1e9)
        assert span.end_time == int(ev.ts * 1e9)
        assert by_id[span.parent.span_id] is threads[ev.thread]

    called = [e for e in events if e.kind is EventKind.TOOL_CALLED]
    tools = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert len(tools) == len(called) == 6
    failed = [s for s in tools if s.status.status_code.name == "ERROR"]
    assert len(failed) == 2 and all(s.attributes["gen_ai.tool.name"] == "read_file" for s in failed)
    # Ids, names, counts and money only: no prompt, no answer, no tool output, no secret.
    for span in spans:
        for value in span.attributes.values():
            assert SECRET not in str(value) and "notes.txt" not in str(value)


def test_a_live_session_sends_its_spans_to_the_endpoint(tmp_path: Path) -> None:
    with OtlpReceiver() as rx:
        db, session = run(tmp_path, {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url})
        expected = collect_spans(db_events(db, session), session)
        rx.wait_for(lambda spans: len(spans) >= len(expected))
        assert set(rx.paths) == {"/v1/traces"}
        assert sorted(s.name for s in rx.spans) == sorted(s.name for s in expected)
        assert {r.get("service.name") for r in rx.resources} == {"tower"}
        chats = [s for s in rx.spans if s.name.startswith("chat ")]
        assert sum(attrs(s)["gen_ai.usage.input_tokens"] for s in chats) == sum(
            e.payload["usage"]["prompt_tokens"]
            for e in db_events(db, session)
            if e.kind is EventKind.LLM_FINISHED
        )
        traces = {s.trace_id for s in rx.spans}
        assert len(traces) == 1  # one trace: the session's


def test_tower_export_otlp_sends_a_recorded_session(tmp_path: Path) -> None:
    db, session = run(tmp_path)
    expected = collect_spans(db_events(db, session), session)
    with OtlpReceiver() as rx:
        proc = tower(
            "export", session[:10], "--format", "otlp", "--db", db,
            env={"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert f"exported {len(expected)} spans of session {session}" in proc.stderr
        assert len(rx.spans) == len(expected)
        got = sorted((s.name, s.start_time_unix_nano, s.end_time_unix_nano) for s in rx.spans)
        want = sorted((s.name, s.start_time, s.end_time) for s in expected)
        assert got == want  # the recorded timings, not the export's


def test_export_otlp_errors_are_one_line(tmp_path: Path) -> None:
    db, session = run(tmp_path)
    proc = tower("export", session, "--format", "otlp", "--db", db, unset=NO_OTEL)
    one_line_error(proc, "OTEL_EXPORTER_OTLP_ENDPOINT", "not set")
    with OtlpReceiver() as rx:
        port = rx.port
    proc = tower(
        "export", session, "--format", "otlp", "--db", db,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
             "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr.strip().splitlines()[-1]


def test_a_crashed_session_exports_with_its_open_spans_ended(tmp_path: Path) -> None:
    """A log cut off mid-call (no session end): every span still ends, the cut call and
    thread marked unfinished, at the last event's time."""
    db, session = run(tmp_path)
    events = db_events(db, session)
    cut = next(e.seq for e in events if e.kind is EventKind.LLM_STARTED)
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM events WHERE session = ? AND seq > ?", (session, cut))
    spans = collect_spans(db_events(db, session), session)
    assert spans and all(s.end_time is not None for s in spans)
    (chat,) = [s for s in spans if s.name.startswith("chat ")]
    assert chat.status.status_code.name == "ERROR" and "unfinished" in chat.status.description
    assert chat.end_time == int(events[cut - 1].ts * 1e9)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_the_other_formats_still_write_files(tmp_path: Path, fmt: str) -> None:
    db, session = run(tmp_path)
    out = tmp_path / f"x.{fmt}"
    proc = tower("export", session, "--format", fmt, "--db", db, "--out", out)
    assert proc.returncode == 0 and out.stat().st_size > 0
