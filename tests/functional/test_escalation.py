"""Automatic escalation: the task's self-check (tower/core/check.py) and the quality triggers
of the agent loop (failed check, repeated call, tool-error streak, context window) that move
a thread to its cascade's next model, or hand it to the human when no model is left or the
next one would cost more than the agent allows (tower/core/supervisor.py `auto_escalate`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import litellm
import pytest

from tests.conftest import Live, ended
from tests.helpers import WAIT_S
from tower.core import llm
from tower.core import payloads as pl
from tower.core.check import CHECK_FAILED, check_answer, run_check
from tower.core.events import Event, EventKind, InboxKind, Resolution, ThreadState
from tower.core.project import CheckSettings, ProjectError, parse_project
from tower.core.simprofiles import SIM_PROFILES
from tower.core.state import fold

LiveFactory = Callable[..., Awaitable[Live]]

FILES = {"ws/note.txt": "six times seven\n", "ws/other.txt": "another note\n"}


def project(
    tasks: str,
    *,
    cascade: tuple[str, ...] = ("sim/small", "sim/large"),
    small_wrong: float = 1,
    meta: str = "",
    agent: str = "",
    tables: str = "",
) -> str:
    """A project whose sim models answer at once; sim/small is wrong on every step that has
    `wrong_args` (unless small_wrong says otherwise), sim/large never is."""
    models = ", ".join(f'"{m}"' for m in cascade)
    return (
        f"""
[project]
name = "esc"
seed = 5
retry_backoff_s = 0
{meta}

[models."sim/small"]
latency_s = 0
tokens_per_s = 0
wrong_rate = {small_wrong}

[models."sim/large"]
latency_s = 0
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
cascade = [{models}]
tools = ["read_file", "write_file", "list_dir", "ask_human", "finish"]
{agent}

{tables}
"""
        + tasks
    )


CHECKED_FINISH = """
[[tasks]]
id = "t"
agent = "a"
prompt = "What is six times seven?"
workspace = "ws"

[tasks.check]
answer_contains = ["42"]

[[tasks.script]]
say = "Reading the note."
tool = "read_file"
args = { path = "note.txt" }

[[tasks.script]]
say = "Here is the answer."
tool = "finish"
args = { answer = "six times seven is 42" }
wrong_args = { answer = "six times seven is 24" }
"""

# The sim cannot make a plain-text answer wrong (`wrong_args` only changes tool arguments),
# so this check's command refuses the first answer it sees and accepts the second.
PLAIN_TEXT = """
[[tasks]]
id = "p"
agent = "a"
prompt = "What is six times seven?"
workspace = "ws"

[tasks.check]
answer_contains = ["42"]
command = "test -e .seen || { touch .seen; echo 'first look: not yet'; exit 1; }"

[[tasks.script]]
say = "six times seven is 42"
"""

FILE_CHECK = """
[[tasks]]
id = "f"
agent = "a"
prompt = "Put ok in out.txt."
workspace = "ws"

[tasks.check]
file = "out.txt"
file_contains = ["ok"]

[[tasks.script]]
say = "Done."
tool = "finish"
args = { answer = "written" }
"""


def reading(paths: list[str], tid: str = "r") -> str:
    """A task that reads the given files one call at a time, then finishes."""
    out = f'\n[[tasks]]\nid = "{tid}"\nagent = "a"\nprompt = "read"\nworkspace = "ws"\n'
    for path in paths:
        out += f'\n[[tasks.script]]\ntool = "read_file"\nargs = {{ path = "{path}" }}\n'
    return out + '\n[[tasks.script]]\ntool = "finish"\nargs = { answer = "read" }\n'


def escalation_items(live: Live) -> list[str]:
    return [i.id for i in live.bus.state.inbox.values() if i.kind is InboxKind.ESCALATION]


def of_kinds(live: Live, tid: str, *kinds: EventKind) -> list[Event]:
    return [e for e in live.events if e.thread == tid and e.kind in kinds]


def models_called(live: Live, tid: str) -> list[str]:
    return [e.payload["model"] for e in live.kinds(tid, EventKind.LLM_STARTED)]


# --- 1. the check itself ------------------------------------------------------------------


async def test_answer_contains_needs_every_string_and_names_the_missing_one() -> None:
    check = CheckSettings(answer_contains=["REFUND", "$3,961.10"])
    ok = await run_check(check, "REFUND of $3,961.10", None)
    assert ok.passed
    bad = await run_check(check, "REFUND of $3,691.10", None)
    assert not bad.passed
    assert "'$3,961.10'" in bad.detail and "'REFUND'" not in bad.detail


async def test_answer_matches_searches_anywhere_in_the_answer() -> None:
    check = CheckSettings(answer_matches=r"\$\d+\.\d{2}\b")
    assert (await run_check(check, "you owe $663.10 in total", None)).passed
    bad = await run_check(check, "you owe 663 dollars", None)
    assert not bad.passed and r"\$\d+\.\d{2}\b" in bad.detail


async def test_answer_contains_and_answer_matches_must_both_hold() -> None:
    check = CheckSettings(answer_contains=["owed"], answer_matches=r"^\w+:")
    assert (await run_check(check, "Chen: amount owed", None)).passed
    assert not (await run_check(check, "Chen amount owed", None)).passed
    assert not (await run_check(check, "Chen: refund", None)).passed


async def test_file_and_file_contains_read_the_workspace(tmp_path: Path) -> None:
    check = CheckSettings(file="out/return.txt", file_contains=["REFUND", "952.17"])
    missing = await run_check(check, "", tmp_path)
    assert not missing.passed and "out/return.txt" in missing.detail
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "return.txt").write_text("REFUND 912.57\n")
    wrong = await run_check(check, "", tmp_path)
    assert not wrong.passed and "952.17" in wrong.detail and "out/return.txt" in wrong.detail
    (tmp_path / "out" / "return.txt").write_text("REFUND 952.17\n")
    assert (await run_check(check, "", tmp_path)).passed


async def test_file_alone_only_needs_the_file_to_exist(tmp_path: Path) -> None:
    check = CheckSettings(file="done.txt")
    assert not (await run_check(check, "", tmp_path)).passed
    (tmp_path / "done.txt").write_text("")
    assert (await run_check(check, "", tmp_path)).passed


async def test_file_check_never_reads_outside_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("REFUND\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    result = await run_check(CheckSettings(file="../secret.txt", file_contains=["REFUND"]), "", ws)
    assert not result.passed and "outside" in result.detail


async def test_file_check_without_a_workspace_fails() -> None:
    result = await run_check(CheckSettings(file="out.txt"), "anything", None)
    assert not result.passed


async def test_command_exit_zero_passes_and_runs_in_the_workspace(tmp_path: Path) -> None:
    check = CheckSettings(command="test -f marker && echo fine")
    before = await run_check(check, "", tmp_path)
    assert not before.passed
    (tmp_path / "marker").write_text("")
    assert (await run_check(check, "", tmp_path)).passed


async def test_command_non_zero_fails_naming_the_command_status_and_last_line(
    tmp_path: Path,
) -> None:
    check = CheckSettings(command="echo first; echo 'totals differ by 270.00'; exit 3")
    result = await run_check(check, "", tmp_path)
    assert not result.passed
    assert check.command is not None and check.command in result.detail
    assert "exit status 3" in result.detail
    assert "totals differ by 270.00" in result.detail
    assert "\n" not in result.detail


async def test_command_without_a_workspace_fails() -> None:
    assert not (await run_check(CheckSettings(command="true"), "", None)).passed


async def test_a_check_that_times_out_fails_instead_of_hanging(tmp_path: Path) -> None:
    # The command would outlast the cap on this wait many times over: only the check's own
    # timeout can end it in time.
    check = CheckSettings(command="sleep 600", timeout_s=0.5)
    result = await asyncio.wait_for(check_answer(check, "", tmp_path), WAIT_S)
    assert result is not None and not result.passed
    assert "timed out" in result.detail


async def test_no_check_means_no_verdict(tmp_path: Path) -> None:
    assert await check_answer(None, "whatever", tmp_path) is None


async def test_every_criterion_must_hold(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("ok\n")
    check = CheckSettings(
        answer_contains=["42"], file="out.txt", file_contains=["ok"], command="exit 1"
    )
    result = await run_check(check, "42", tmp_path)
    assert not result.passed and "exit 1" in result.detail
    passing = CheckSettings(
        answer_contains=["42"], file="out.txt", file_contains=["ok"], command="exit 0"
    )
    assert (await run_check(passing, "42", tmp_path)).passed


CHECK_PROJECT = """
[project]
name = "c"

[[agents]]
name = "a"

[[tasks]]
id = "t"
agent = "a"
prompt = "p"

[tasks.check]
"""


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("", "answer_contains, answer_matches, file or command"),
        ('answer_contains = ["x"]\nfile_contains = ["y"]', "file_contains needs file"),
        ('answer_matches = "(unclosed"', "answer_matches is not a valid regular expression"),
        ('answer_contain = ["x"]', "did you mean 'answer_contains'"),
        ('answer_contains = ["x"]\ntimeout_s = 0', "timeout_s"),
    ],
)
def test_invalid_checks_are_one_line_naming_the_key(tmp_path: Path, body: str, says: str) -> None:
    with pytest.raises(ProjectError) as info:
        parse_project(CHECK_PROJECT + body + "\n", tmp_path)
    problems = info.value.problems
    assert len(problems) == 1, problems
    line = problems[0]
    assert "\n" not in line
    assert line.startswith("tower.toml: tasks[0].check"), line
    assert says in line


# --- 2. a failed check escalates to the next model ---------------------------------------


async def test_failed_check_on_finish_escalates_and_the_stronger_model_passes(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(CHECKED_FINISH), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE, view.reason
    assert view.answer == "six times seven is 42"
    steps = of_kinds(live, "t", EventKind.CHECKED, EventKind.ESCALATED)
    assert [e.kind for e in steps] == [EventKind.CHECKED, EventKind.ESCALATED, EventKind.CHECKED]
    failed, esc, passed = (e.payload for e in steps)
    assert failed["passed"] is False and failed["model"] == "sim/small"
    assert "42" in failed["detail"]
    assert esc["from_model"] == "sim/small" and esc["to_model"] == "sim/large"
    assert esc["trigger"].startswith("check failed")
    assert passed["passed"] is True and passed["model"] == "sim/large"
    done = live.kinds("t", EventKind.THREAD_STATE)[-1]
    assert done.payload["state"] == ThreadState.DONE and done.seq > steps[-1].seq
    # The failed finish's result tells the model what was wrong.
    finishes = [
        r.payload for r in live.kinds("t", EventKind.TOOL_RESULT) if r.payload["tool"] == "finish"
    ]
    assert finishes[0]["ok"] is False
    assert finishes[0]["result"].startswith(CHECK_FAILED)
    assert failed["detail"] in finishes[0]["result"]
    assert finishes[1]["ok"] is True
    tool_msgs = [m["content"] for m in live.sent("t") if m.get("role") == "tool"]
    assert finishes[0]["result"] in tool_msgs
    # Only the refused step is redone on the stronger model.
    assert models_called(live, "t") == ["sim/small", "sim/small", "sim/large"]
    assert view.checked is True and view.escalations == 1 and view.items == 0


async def test_failed_plain_text_answer_escalates_and_the_stronger_model_passes(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(PLAIN_TEXT), FILES)
    await live.waiter.until(ended(live, "p"))
    view = live.view("p")
    assert view.state is ThreadState.DONE, view.reason
    assert view.answer == "six times seven is 42"
    assert view.reason == "answered"
    steps = of_kinds(live, "p", EventKind.CHECKED, EventKind.ESCALATED)
    assert [e.kind for e in steps] == [EventKind.CHECKED, EventKind.ESCALATED, EventKind.CHECKED]
    failed, esc, passed = (e.payload for e in steps)
    assert failed["passed"] is False and failed["model"] == "sim/small"
    assert "first look: not yet" in failed["detail"]
    assert esc["trigger"].startswith("check failed") and esc["to_model"] == "sim/large"
    assert passed["passed"] is True and passed["model"] == "sim/large"
    assert live.kinds("p", EventKind.TOOL_RESULT) == []  # no tool was involved
    # Without a tool call to answer, the model hears why in a user message.
    notes = [
        m["content"]
        for m in live.sent("p")
        if m.get("role") == "user" and str(m.get("content")).startswith(CHECK_FAILED)
    ]
    assert len(notes) == 1 and "first look: not yet" in notes[0]
    assert models_called(live, "p") == ["sim/small", "sim/large"]


# --- 3. nothing stronger left: the human ---------------------------------------------------


async def test_exhausted_cascade_hands_to_the_human_reply_continues_deny_stops(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(CHECKED_FINISH, cascade=("sim/small",)), FILES)
    await live.waiter.until(lambda: live.view("t").reason == "handed to the human")
    (first,) = escalation_items(live)
    data = live.bus.state.inbox[first].data
    assert "check failed" in data["reason"]
    assert "no stronger model left" in data["reason"]
    assert data["est_escalation_usd"] is None and data["next_model"] is None
    # Nobody has decided anything yet in this session: the documented two-minute default.
    assert data["est_human_minutes"] == pytest.approx(2.0)
    assert live.view("t").state is ThreadState.WAITING
    esc = live.kinds("t", EventKind.ESCALATED)
    assert [e.payload["to_model"] for e in esc] == ["human"]
    calls = len(live.kinds("t", EventKind.LLM_STARTED))

    live.sup.reply(first, "Multiply again, carefully.")
    await live.waiter.until(lambda: any(i != first for i in escalation_items(live)))
    # It went on: one more call on the same model (still wrong here), then the human again.
    assert models_called(live, "t")[calls:] == ["sim/small"]
    msgs = [str(m.get("content")) for m in live.sent("t")]
    assert any("Multiply again, carefully." in m for m in msgs)
    checks = [e.payload["passed"] for e in live.kinds("t", EventKind.CHECKED)]
    assert checks == [False, False]

    (second,) = escalation_items(live)
    live.sup.deny(second)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.FAILED and view.reason == "stopped by the human"
    closed = [e.payload["resolution"] for e in live.kinds("t", EventKind.INBOX_CLOSED)]
    assert closed == [Resolution.ANSWERED, Resolution.DENIED]
    assert view.items == 2 and view.checked is False


async def test_a_human_reply_lets_the_thread_finish(live_factory: LiveFactory) -> None:
    live = await live_factory(project(FILE_CHECK, cascade=("sim/small",)), FILES)
    await live.waiter.until(lambda: live.view("f").reason == "handed to the human")
    (item,) = escalation_items(live)
    assert "out.txt" in live.bus.state.inbox[item].data["reason"]
    ws = live.sup.runs["f"].workspace
    assert ws is not None
    (ws.root / "out.txt").write_text("ok\n")  # the human fixed it by hand
    live.sup.reply(item, "I wrote out.txt; check again.")
    await live.waiter.until(ended(live, "f"))
    view = live.view("f")
    assert view.state is ThreadState.DONE and view.answer == "written"
    assert [e.payload["passed"] for e in live.kinds("f", EventKind.CHECKED)] == [False, True]
    assert view.checked is True and view.check_detail == "passed"


async def test_headless_denies_the_escalation_and_the_thread_fails_naming_it(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(CHECKED_FINISH, cascade=("sim/small",)), FILES, approve="all")
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.FAILED
    assert "no human to hand to" in view.reason
    assert "no stronger model left" in view.reason
    opened = live.kinds("t", EventKind.INBOX_OPENED)
    assert [e.payload["kind"] for e in opened] == [InboxKind.ESCALATION]  # once, no loop
    closed = live.kinds("t", EventKind.INBOX_CLOSED)
    assert closed[0].payload["resolution"] == Resolution.DENIED
    assert closed[0].payload["by"] == "rule:--approve all"
    assert len(live.kinds("t", EventKind.LLM_STARTED)) == 2  # the script's two steps


# --- 4. max_escalation_usd -----------------------------------------------------------------


async def test_escalation_over_the_limit_goes_to_the_human_with_both_prices(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(CHECKED_FINISH, agent="max_escalation_usd = 0.0001"), FILES)
    await live.waiter.until(lambda: live.view("t").reason == "handed to the human")
    (item,) = escalation_items(live)
    data = live.bus.state.inbox[item].data
    opened = live.kinds("t", EventKind.INBOX_OPENED)[0]
    spent = sum(
        e.payload["cost_usd"] for e in live.kinds("t", EventKind.LLM_FINISHED) if e.seq < opened.seq
    )
    small, large = SIM_PROFILES["sim/small"], SIM_PROFILES["sim/large"]
    ratio = large.input_usd_per_mtok / small.input_usd_per_mtok
    assert ratio == pytest.approx(large.output_usd_per_mtok / small.output_usd_per_mtok)
    # The work so far, priced at the next model's rates.
    assert data["est_escalation_usd"] == pytest.approx(spent * ratio, abs=2e-6)
    assert data["est_escalation_usd"] > 0.0001
    assert data["next_model"] == "sim/large"
    assert data["est_human_minutes"] > 0
    assert "check failed" in data["reason"]
    assert "over the $0.0001 limit" in data["reason"]
    assert f"${data['est_escalation_usd']:.4f}" in data["reason"]
    assert [e.payload["to_model"] for e in live.kinds("t", EventKind.ESCALATED)] == ["human"]
    assert live.view("t").model == "sim/small"
    live.sup.deny(item)
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.FAILED
    assert "sim/large" not in models_called(live, "t")


async def test_escalation_under_the_limit_goes_to_the_model(live_factory: LiveFactory) -> None:
    live = await live_factory(project(CHECKED_FINISH, agent="max_escalation_usd = 1.0"), FILES)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE and view.items == 0
    esc = live.kinds("t", EventKind.ESCALATED)
    assert [e.payload["to_model"] for e in esc] == ["sim/large"]


# --- 5. the same call again and again ------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "paths", "after"),
    [
        ("", ["note.txt"] * 3, 3),
        ("escalate_on_repeat = 4", ["note.txt"] * 3, None),
        ("escalate_on_repeat = 4", ["note.txt"] * 4, 4),
        ("", ["note.txt", "other.txt", "note.txt", "other.txt"], None),
    ],
)
async def test_repeated_identical_calls_escalate(
    live_factory: LiveFactory, setting: str, paths: list[str], after: int | None
) -> None:
    live = await live_factory(project(reading(paths), small_wrong=0, agent=setting), FILES)
    await live.waiter.until(ended(live, "r"))
    assert live.view("r").state is ThreadState.DONE
    esc = live.kinds("r", EventKind.ESCALATED)
    if after is None:
        assert esc == []
        assert set(models_called(live, "r")) == {"sim/small"}
        return
    assert len(esc) == 1
    trigger = esc[0].payload["trigger"]
    assert trigger.startswith("loop:") and "read_file" in trigger and f"{after} times" in trigger
    assert esc[0].payload["to_model"] == "sim/large"
    calls = live.kinds("r", EventKind.TOOL_CALLED)
    started = live.kinds("r", EventKind.LLM_STARTED)
    assert calls[after - 1].seq < esc[0].seq < started[after].seq  # right after that call
    assert started[after].payload["model"] == "sim/large"
    guidance = [str(m.get("content")) for m in live.sent("r")]
    assert any(f"You called read_file {after} times" in m for m in guidance)


# --- 6. tool errors in a row ---------------------------------------------------------------


async def test_three_tool_errors_in_a_row_escalate(live_factory: LiveFactory) -> None:
    live = await live_factory(project(reading(["a.txt", "b.txt", "c.txt"]), small_wrong=0), FILES)
    await live.waiter.until(ended(live, "r"))
    results = live.kinds("r", EventKind.TOOL_RESULT)
    assert [r.payload["ok"] for r in results[:3]] == [False, False, False]
    assert all(r.payload["result"].startswith("error:") for r in results[:3])
    esc = live.kinds("r", EventKind.ESCALATED)
    assert len(esc) == 1
    assert esc[0].payload["trigger"] == "3 tool errors in a row"
    assert esc[0].payload["to_model"] == "sim/large"
    assert results[2].seq < esc[0].seq < results[3].seq
    assert live.view("r").state is ThreadState.DONE


async def test_escalate_after_errors_is_configurable(live_factory: LiveFactory) -> None:
    live = await live_factory(
        project(
            reading(["a.txt", "b.txt", "c.txt"]), small_wrong=0, agent="escalate_after_errors = 4"
        ),
        FILES,
    )
    await live.waiter.until(ended(live, "r"))
    assert live.kinds("r", EventKind.ESCALATED) == []


DENIED_WRITE = """
[[tasks]]
id = "d"
agent = "a"
prompt = "read, then write"
workspace = "ws"

[[tasks.script]]
tool = "read_file"
args = { path = "a.txt" }

[[tasks.script]]
tool = "read_file"
args = { path = "b.txt" }

[[tasks.script]]
tool = "write_file"
args = { path = "out.txt", content = "x" }

[[tasks.script]]
tool = "finish"
args = { answer = "gave up" }
"""


async def test_a_human_deny_is_not_a_tool_error(live_factory: LiveFactory) -> None:
    toml = project(DENIED_WRITE, small_wrong=0, tables='[policy]\nask = ["write_file"]')
    live = await live_factory(toml, FILES)
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    live.sup.deny(live.item_of("d"), "not now")
    await live.waiter.until(ended(live, "d"))
    results = [(r.payload["tool"], r.payload["ok"]) for r in live.kinds("d", EventKind.TOOL_RESULT)]
    assert results == [
        ("read_file", False),
        ("read_file", False),
        ("write_file", False),
        ("finish", True),
    ]
    assert live.kinds("d", EventKind.ESCALATED) == []
    assert set(models_called(live, "d")) == {"sim/small"}


async def test_a_success_in_between_resets_the_error_streak(live_factory: LiveFactory) -> None:
    paths = ["a.txt", "b.txt", "note.txt", "c.txt", "d.txt"]
    live = await live_factory(project(reading(paths), small_wrong=0), FILES)
    await live.waiter.until(ended(live, "r"))
    oks = [r.payload["ok"] for r in live.kinds("r", EventKind.TOOL_RESULT)]
    assert oks == [False, False, True, False, False, True]
    assert live.kinds("r", EventKind.ESCALATED) == []


# --- 7. context window ---------------------------------------------------------------------


def _bad_request(message: str) -> Exception:
    return litellm.BadRequestError(message=message, model="gpt-4o", llm_provider="openai")


CONTEXT_ERRORS: list[tuple[str, Callable[[], BaseException]]] = [
    (
        "openai",
        lambda: Exception(
            "This model's maximum context length is 8192 tokens. However, your messages "
            "resulted in 9000 tokens"
        ),
    ),
    ("anthropic", lambda: Exception("prompt is too long: 210000 tokens > 200000 maximum")),
    (
        "litellm-class",
        lambda: litellm.ContextWindowExceededError(
            message="request rejected", model="gpt-4o", llm_provider="openai"
        ),
    ),
    (
        "bad-request-code",
        lambda: _bad_request(
            "OpenAIException - Error code: 400 - {'error': {'type': "
            "'invalid_request_error', 'code': 'context_length_exceeded'}}"
        ),
    ),
]


@pytest.mark.parametrize("make", [m for _, m in CONTEXT_ERRORS], ids=[n for n, _ in CONTEXT_ERRORS])
def test_context_window_errors_are_read_as_such(make: Callable[[], BaseException]) -> None:
    exc = make()
    if isinstance(exc, litellm.BadRequestError):
        assert exc.status_code == 400
    err = llm.read_error(exc, "gpt-4o")
    assert err.context_window is True
    assert err.retryable is False
    assert "gpt-4o" in str(err) and "context window" in str(err)
    assert "\n" not in str(err)


def test_a_plain_bad_request_is_not_a_context_window_error() -> None:
    err = llm.read_error(
        _bad_request("Invalid value for 'temperature': expected a number <= 2"), "gpt-4o"
    )
    assert err.context_window is False and err.retryable is False
    assert "400" in str(err)


def test_an_openai_tokens_per_minute_rate_limit_is_retryable() -> None:
    exc = litellm.RateLimitError(
        message="Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
        "Limit 30000, Used 25000, Requested 8000. Please try again in 6s.",
        llm_provider="openai",
        model="gpt-4o",
    )
    err = llm.read_error(exc, "gpt-4o")
    assert err.retryable is True and err.context_window is False


def test_bedrock_throttling_is_a_retryable_rate_limit_not_a_context_window() -> None:
    # AWS Bedrock's ThrottlingException (HTTP 429) says "Too many tokens, please wait before
    # trying again." about tokens per minute: retrying later helps, a bigger model does not.
    exc = litellm.RateLimitError(
        message="Too many tokens, please wait before trying again.",
        llm_provider="bedrock",
        model="bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
    )
    assert exc.status_code == 429
    err = llm.read_error(exc, "bedrock/claude")
    assert err.context_window is False
    assert err.retryable is True


SIMPLE = """
[[tasks]]
id = "w"
agent = "a"
prompt = "go"

[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


@pytest.fixture
def overflow_on_small(monkeypatch: pytest.MonkeyPatch) -> None:
    """sim/small answers every call with the provider's "prompt is too long" 400."""
    real = llm.stream_call

    async def call(model: str, *args: Any, **kwargs: Any) -> llm.CallResult:
        if model == "sim/small":
            raise llm.read_error(
                _bad_request("prompt is too long: 210000 tokens > 200000 maximum"), model
            )
        return await real(model, *args, **kwargs)

    monkeypatch.setattr(llm, "stream_call", call)


@pytest.mark.parametrize("retries", ["", "max_retries = 0"])
async def test_context_window_moves_the_thread_to_the_next_model(
    live_factory: LiveFactory, overflow_on_small: None, retries: str
) -> None:
    live = await live_factory(project(SIMPLE, small_wrong=0, meta=retries))
    await live.waiter.until(ended(live, "w"))
    view = live.view("w")
    assert view.state is ThreadState.DONE, view.reason
    assert view.answer == "ok"
    failed = live.kinds("w", EventKind.LLM_FAILED)
    assert [(f.payload["model"], f.payload["retryable"]) for f in failed] == [("sim/small", False)]
    esc = live.kinds("w", EventKind.ESCALATED)
    assert [e.payload["trigger"] for e in esc] == ["context window exceeded on sim/small"]
    assert models_called(live, "w") == ["sim/small", "sim/large"]


async def test_context_window_on_the_last_model_fails_without_retrying(
    live_factory: LiveFactory, overflow_on_small: None
) -> None:
    live = await live_factory(project(SIMPLE, cascade=("sim/small",)))
    await live.waiter.until(ended(live, "w"))
    view = live.view("w")
    assert view.state is ThreadState.FAILED
    assert view.reason.startswith("error: sim/small: context window exceeded")
    assert len(live.kinds("w", EventKind.LLM_STARTED)) == 1
    assert live.kinds("w", EventKind.ESCALATED) == []


# --- 8. the reducer ------------------------------------------------------------------------


class Log:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, payload: pl.Payload, thread: str | None = None, /) -> None:
        n = len(self.events)
        self.events.append(Event(n + 1, 100.0 + n, payload.KIND, thread, payload.to_dict()))

    def spawn(self, tid: str) -> None:
        self.emit(
            pl.ThreadSpawned(
                agent="a",
                task=tid,
                title=tid,
                prompt="p",
                cascade=["sim/small", "sim/large"],
                model="sim/small",
                priority=0,
                budget_usd=None,
                budget_tokens=None,
                max_steps=20,
            ),
            tid,
        )

    def item(self, tid: str, item: str, kind: InboxKind) -> None:
        self.emit(pl.InboxOpened.of(item=item, kind=str(kind), cost_so_far=0.0), tid)


def test_reducer_keeps_the_last_check_and_counts_items() -> None:
    log = Log()
    log.spawn("t")
    log.spawn("u")
    state = fold(log.events)
    assert state.threads["t"].checked is None and state.threads["t"].check_detail == ""
    assert state.threads["t"].items == 0

    log.emit(pl.Checked(passed=False, detail="the answer lacks '42'", model="sim/small"), "t")
    state = fold(log.events)
    t = state.threads["t"]
    assert t.checked is False and t.check_detail == "the answer lacks '42'"
    assert "the answer lacks '42'" in t.tail
    assert state.threads["u"].checked is None  # another thread's check is not this one's

    log.item("t", "i1", InboxKind.ESCALATION)
    log.emit(pl.InboxClosed(item="i1", resolution="answered", by="human"), "t")
    log.item("t", "i2", InboxKind.APPROVAL)
    log.emit(pl.Checked(passed=True, detail="passed", model="sim/large"), "t")
    state = fold(log.events)
    t = state.threads["t"]
    assert t.checked is True and t.check_detail == "passed"
    assert t.items == 2  # opened, whether or not still open
    assert t.pending == 1
    assert state.threads["u"].items == 0


async def test_folding_the_log_gives_the_live_check_figures(live_factory: LiveFactory) -> None:
    live = await live_factory(project(CHECKED_FINISH, cascade=("sim/small",)), FILES)
    await live.waiter.until(lambda: live.view("t").reason == "handed to the human")
    live.sup.deny(escalation_items(live)[0])
    await live.waiter.until(ended(live, "t"))
    emitted = [(e.seq, e.kind, e.payload) for e in live.events]
    await live.store.flush()
    # The log as stored in the database, not the events the live state was built from.
    stored = [ev async for ev in live.store.events(live.sup.session_id)]
    assert [(e.seq, e.kind, e.payload) for e in stored][: len(emitted)] == emitted
    folded = fold(stored).threads["t"]
    view = live.view("t")
    figures = (folded.checked, folded.check_detail, folded.items, folded.escalations)
    assert figures == (view.checked, view.check_detail, view.items, view.escalations)
    # What this run must have produced, independent of the reducer: sim/small answers "24",
    # the check fails on the missing "42", and with no model left the thread goes to the
    # human once (one escalation, one inbox item), who denies it.
    assert figures == (False, "the answer does not contain '42'", 1, 1)
    # ... and the same counted straight from the events.
    assert [e.payload["passed"] for e in live.kinds("t", EventKind.CHECKED)] == [False]
    assert len(live.kinds("t", EventKind.INBOX_OPENED)) == 1
    escalated = [e.payload["to_model"] for e in live.kinds("t", EventKind.ESCALATED)]
    assert escalated == ["human"]
