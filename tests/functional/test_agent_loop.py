"""The agent-loop contract: states, pause/resume, kill, escalate, approvals, budget stops,
retries and concurrency, driven through the supervisor's commands on sim models."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ended
from tower.core.events import EventKind, InboxKind, Resolution, ThreadState

BASE = """
[project]
name = "loop"
retry_backoff_s = 0
call_timeout_s = {timeout}

[limits]
max_concurrent = {cap}

[models."sim/small"]
latency_s = {latency}
tokens_per_s = 0
wrong_rate = 0

[[agents]]
name = "a"
cascade = ["sim/instant", "sim/small", "sim/large"]
tools = ["read_file", "write_file", "list_dir", "ask_human", "finish"]
max_steps = {max_steps}
"""

ASK_THEN_WRITE = """
[[tasks]]
id = "t"
agent = "a"
prompt = "do it"
workspace = "ws"

[[tasks.script]]
say = "Need a decision."
tool = "ask_human"
args = { question = "Which year?" }

[[tasks.script]]
say = "Writing the result."
tool = "write_file"
args = { path = "out.txt", content = "2025" }

[[tasks.script]]
tool = "finish"
args = { answer = "written" }
"""


def project(
    tasks: str, cap: int = 16, latency: float = 0.0, timeout: float = 30, max_steps: int = 20
) -> str:
    return BASE.format(cap=cap, latency=latency, timeout=timeout, max_steps=max_steps) + tasks


FILES = {"ws/readme.txt": "hello\n"}


async def test_question_answer_then_approval_then_done(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    item = live.item_of("t")
    assert live.bus.state.inbox[item].kind is InboxKind.QUESTION
    assert live.view("t").state is ThreadState.WAITING
    live.sup.reply(item, "2025")
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    approval = live.item_of("t")
    data = live.bus.state.inbox[approval].data
    assert data["tool"] == "write_file" and data["args"]["path"] == "out.txt"
    assert data["reason"] == "Writing the result."
    assert not (live.sup.runs["t"].workspace.root / "out.txt").exists()  # nothing before approval
    live.sup.approve(approval)
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE and view.answer == "written"
    assert (live.sup.runs["t"].workspace.root / "out.txt").read_text() == "2025"
    results = live.kinds("t", EventKind.TOOL_RESULT)
    assert results[0].payload["result"] == "2025"  # the human's answer reached the model
    closed = live.kinds("t", EventKind.INBOX_CLOSED)
    assert [c.payload["resolution"] for c in closed] == ["answered", "approved"]
    assert live.bus.state.decisions == 2


async def test_deny_sends_refusal_to_model_and_writes_nothing(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    live.sup.reply(live.item_of("t"), "2025")
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    live.sup.deny(live.item_of("t"), "not now")
    await live.waiter.until(ended(live, "t"))
    assert not (live.sup.runs["t"].workspace.root / "out.txt").exists()
    write = [r for r in live.kinds("t", EventKind.TOOL_RESULT) if r.payload["tool"] == "write_file"]
    assert write[0].payload["ok"] is False and "not now" in write[0].payload["result"]


async def test_approve_with_edited_args(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    live.sup.reply(live.item_of("t"), "2025")
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    live.sup.approve(live.item_of("t"), args={"path": "edited.txt", "content": "by hand"})
    await live.waiter.until(ended(live, "t"))
    root = live.sup.runs["t"].workspace.root
    assert (root / "edited.txt").read_text() == "by hand"
    assert not (root / "out.txt").exists()


async def test_approving_one_item_unblocks_exactly_that_thread(live_factory) -> None:
    tasks = ASK_THEN_WRITE.replace('id = "t"', 'id = "t"\nrepeat = 3')
    live = await live_factory(project(tasks), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 3)
    first = next(iter(live.bus.state.inbox.values()))
    live.sup.reply(first.id, "2025")
    await live.waiter.until(
        lambda: (
            live.view(first.thread).pending == 1
            and next(i for i in live.bus.state.inbox.values() if i.thread == first.thread).kind
            is InboxKind.APPROVAL
        )
    )
    others = [t for t in ("t-1", "t-2", "t-3") if t != first.thread]
    for tid in others:
        assert live.view(tid).state is ThreadState.WAITING
        assert len(live.kinds(tid, EventKind.LLM_STARTED)) == 1  # still on its first step
    assert len(live.kinds(first.thread, EventKind.LLM_STARTED)) == 2


async def test_pause_takes_effect_at_next_checkpoint_and_resume_continues(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    live.sup.pause("t")
    assert live.view("t").state is ThreadState.WAITING  # not yet: it waits for the human
    live.sup.reply(live.item_of("t"), "2025")
    await live.waiter.until(lambda: live.view("t").state is ThreadState.PAUSED)
    calls = len(live.kinds("t", EventKind.LLM_STARTED))
    assert calls == 1  # paused before its next model call
    live.sup.resume("t")
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    assert len(live.kinds("t", EventKind.LLM_STARTED)) == 2
    live.sup.approve(live.item_of("t"))
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.DONE


async def test_pause_while_queued_keeps_it_queued_until_resume(live_factory) -> None:
    tasks = ASK_THEN_WRITE.replace('id = "t"', 'id = "t"\nrepeat = 2')
    live = await live_factory(project(tasks, cap=1), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    queued = "t-2" if live.view("t-1").state is ThreadState.WAITING else "t-1"
    assert live.view(queued).state is ThreadState.QUEUED
    live.sup.pause(queued)
    assert live.view(queued).state is ThreadState.PAUSED
    live.sup.kill("t-1" if queued == "t-2" else "t-2")
    # the slot is free, but a paused thread does not start
    assert live.sup.runs[queued].task is None
    live.sup.resume(queued)
    await live.waiter.until(
        lambda: len(live.bus.state.inbox) == 1 and live.view(queued).state is ThreadState.WAITING
    )


async def test_kill_during_a_call_cancels_at_once_and_releases_budget(live_factory) -> None:
    tasks = ASK_THEN_WRITE.replace('agent = "a"', 'agent = "slow"')
    toml = project(tasks, latency=60).replace(
        '[[agents]]\nname = "a"',
        '[[agents]]\nname = "slow"\ncascade = ["sim/small"]\n\n[[agents]]\nname = "a"',
    )
    live = await live_factory(toml, FILES)
    await live.waiter.until(lambda: live.kinds("t", EventKind.LLM_STARTED) != [])
    assert live.bus.state.budget.reserved_usd > 0
    task = live.sup.runs["t"].task
    live.sup.kill("t")
    assert live.view("t").state is ThreadState.KILLED  # at once, not after the call
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)
    assert live.sup.ledger.open_reservations == 0
    await asyncio.wait([task], timeout=30)  # a cap that only a hung task reaches
    assert task.cancelled()
    failed = live.kinds("t", EventKind.LLM_FAILED)
    assert failed[-1].payload["error"] == "cancelled"
    assert live.kinds("t", EventKind.LLM_FINISHED) == []


async def test_kill_drops_the_threads_inbox_items(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    item = live.item_of("t")
    live.sup.kill("t")
    assert item not in live.bus.state.inbox
    closed = live.kinds("t", EventKind.INBOX_CLOSED)
    assert closed[-1].payload == {"item": item, "resolution": "dropped", "by": "tower"}
    with pytest.raises(Exception, match="no open inbox item"):
        live.sup.approve(item)


async def test_escalate_moves_to_next_model_then_to_the_human(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    assert live.sup.escalate("t") == "sim/small"
    assert live.sup.escalate("t") == "sim/large"
    assert live.view("t").model == "sim/large"
    item = live.sup.escalate("t")  # nothing stronger left: the human
    assert live.bus.state.inbox[item].kind is InboxKind.ESCALATION
    question = next(i.id for i in live.bus.state.inbox.values() if i.kind is InboxKind.QUESTION)
    live.sup.reply(question, "2025")
    # the thread stops at its checkpoint until the human answers the escalation
    await live.waiter.until(lambda: live.view("t").reason == "handed to the human")
    assert len(live.kinds("t", EventKind.LLM_STARTED)) == 1
    live.sup.reply(item, "Use the 2025 figures.")
    await live.waiter.until(
        lambda: any(i.kind is InboxKind.APPROVAL for i in live.bus.state.inbox.values())
    )
    started = live.kinds("t", EventKind.LLM_STARTED)
    assert started[-1].payload["model"] == "sim/large"
    msgs = live.sent("t")
    assert any("Use the 2025 figures." in (m.get("content") or "") for m in msgs)
    esc = live.kinds("t", EventKind.ESCALATED)
    assert [e.payload["to_model"] for e in esc] == ["sim/small", "sim/large", "human"]


async def test_denied_escalation_stops_the_thread(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    item = live.sup.escalate("t", to="human")
    live.sup.deny(item)
    question = next(i.id for i in live.bus.state.inbox.values() if i.kind is InboxKind.QUESTION)
    live.sup.reply(question, "2025")
    await live.waiter.until(ended(live, "t"))
    assert live.view("t").state is ThreadState.FAILED
    assert live.view("t").reason == "stopped by the human"


BUDGET_TASK = """
[budget]
thread_usd = 0.0005

[[tasks]]
id = "b"
agent = "a"
prompt = "do it"

[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_budget_stop_asks_and_raise_lets_it_continue(live_factory) -> None:
    live = await live_factory(project(BUDGET_TASK), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    item = live.item_of("b")
    data = live.bus.state.inbox[item].data
    assert data["kind"] == "budget" and data["scope"] == "thread"
    view = live.view("b")
    assert view.state is ThreadState.PAUSED and view.reason == "budget"
    spent = live.sup.ledger.threads["b"]
    assert spent.spent_usd + spent.reserved_usd <= 0.0005 + 1e-12  # never overshot
    live.sup.raise_budget(item, usd=0.01)
    await live.waiter.until(ended(live, "b"))
    assert live.view("b").state is ThreadState.DONE
    raised = live.kinds("b", EventKind.BUDGET_RAISED)
    assert raised[0].payload["scope"] == "thread" and raised[0].payload["usd"] == 0.01


async def test_budget_declined_fails_with_reason_budget(live_factory) -> None:
    live = await live_factory(project(BUDGET_TASK), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    live.sup.deny(live.item_of("b"))  # on a budget item: declined
    await live.waiter.until(ended(live, "b"))
    assert live.view("b").state is ThreadState.FAILED and live.view("b").reason == "budget"
    assert live.sup.ledger.threads["b"].spent_usd <= 0.0005


async def test_headless_rule_declines_budget(live_factory) -> None:
    live = await live_factory(project(BUDGET_TASK), FILES, approve="all")
    await live.waiter.until(ended(live, "b"))
    assert live.view("b").reason == "budget"
    closed = live.kinds("b", EventKind.INBOX_CLOSED)
    assert closed[0].payload["resolution"] == Resolution.DECLINED
    assert closed[0].payload["by"] == "rule:--approve all"


FAULTS = """
[[tasks]]
id = "f"
agent = "a"
prompt = "do it"
workspace = "ws"

[[tasks.script]]
tool = "list_dir"
fault = "{fault}"
fault_times = {times}

[[tasks.script]]
tool = "finish"
args = {{ answer = "ok" }}
"""


@pytest.mark.parametrize("fault", ["rate_limit", "server_error", "timeout"])
async def test_retryable_faults_are_retried_then_succeed(live_factory, fault) -> None:
    # The `timeout` fault's calls hang until the call timeout ends them: short, yet far more
    # than a call that answers takes on a slow machine. The other faults answer at once.
    timeout = 2 if fault == "timeout" else 30
    live = await live_factory(project(FAULTS.format(fault=fault, times=2), timeout=timeout), FILES)
    await live.waiter.until(ended(live, "f"))
    assert live.view("f").state is ThreadState.DONE
    failed = live.kinds("f", EventKind.LLM_FAILED)
    assert len(failed) == 2 and all(f.payload["retryable"] for f in failed)
    assert live.view("f").errors == 2
    assert live.bus.state.budget.reserved_usd == pytest.approx(0, abs=1e-12)
    reasons = [e.payload["reason"] for e in live.kinds("f", EventKind.THREAD_STATE)]
    assert "retrying (1/3)" in reasons and "retrying (2/3)" in reasons


async def test_retries_exhausted_fail_with_a_readable_reason(live_factory) -> None:
    live = await live_factory(project(FAULTS.format(fault="rate_limit", times=9)), FILES)
    await live.waiter.until(ended(live, "f"))
    view = live.view("f")
    assert view.state is ThreadState.FAILED
    assert view.reason.startswith("error: sim/instant: rate limited (429)")
    assert "\n" not in view.reason and "Traceback" not in view.reason


async def test_malformed_tool_json_goes_back_to_the_model(live_factory) -> None:
    live = await live_factory(project(FAULTS.format(fault="malformed_tool_json", times=1)), FILES)
    await live.waiter.until(ended(live, "f"))
    result = live.kinds("f", EventKind.TOOL_RESULT)[0].payload
    assert result["ok"] is False and "not valid JSON" in result["result"]
    assert live.view("f").state is ThreadState.DONE


async def test_max_steps_fails_the_thread(live_factory) -> None:
    tasks = BUDGET_TASK.replace("thread_usd = 0.0005", "thread_usd = 1.0")
    live = await live_factory(project(tasks, max_steps=2), FILES)
    await live.waiter.until(ended(live, "b"))
    assert live.view("b").state is ThreadState.FAILED
    assert live.view("b").reason.startswith("max_steps")
    assert len(live.kinds("b", EventKind.LLM_FINISHED)) == 2


SLOW = """
[[tasks]]
id = "low"
agent = "a"
prompt = "low"
repeat = 3
[[tasks.script]]
tool = "ask_human"
args = {{ question = "q" }}

[[tasks]]
id = "high"
agent = "a"
prompt = "high"
priority = {prio}
repeat = 2
[[tasks.script]]
tool = "ask_human"
args = {{ question = "q" }}
"""


async def test_concurrency_cap_and_priority_order(live_factory) -> None:
    live = await live_factory(project(SLOW.format(prio=5), cap=2), FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 2)
    states = {tid: v.state for tid, v in live.bus.state.threads.items()}
    assert {t for t, s in states.items() if s is ThreadState.WAITING} == {"high-1", "high-2"}
    assert all(states[f"low-{i}"] is ThreadState.QUEUED for i in (1, 2, 3))
    running_max = 0

    def watch(_ev):
        nonlocal running_max
        active = sum(
            1
            for v in live.bus.state.threads.values()
            if v.state in (ThreadState.RUNNING, ThreadState.WAITING)
        )
        running_max = max(running_max, active)

    live.bus.subscribe(watch)
    for _ in range(5):
        await live.waiter.until(lambda: len(live.bus.state.inbox) >= 1)
        live.sup.reply(next(iter(live.bus.state.inbox)), "a")
    await live.waiter.until(lambda: live.bus.state.all_ended)
    assert running_max <= 2
    assert live.bus.state.count(ThreadState.DONE) == 5


async def test_per_model_cap(live_factory) -> None:
    toml = project(SLOW.format(prio=0), cap=10) + '\n[models."sim/instant"]\nmax_concurrent = 1\n'
    live = await live_factory(toml, FILES)
    await live.waiter.until(lambda: len(live.bus.state.inbox) == 1)
    waiting = [v for v in live.bus.state.threads.values() if v.state is ThreadState.WAITING]
    queued = [v for v in live.bus.state.threads.values() if v.state is ThreadState.QUEUED]
    assert len(waiting) == 1 and len(queued) == 4


async def test_spawn_command_and_comment(live_factory) -> None:
    live = await live_factory(project(ASK_THEN_WRITE), FILES, spawn_tasks=False)
    tid = live.sup.spawn("a", "Say hello", model="sim/large")
    # A comment on the thread (not on an inbox item) before its first call: logged, and
    # sent to the model with that call.
    live.sup.reply(tid, "Keep it short, please.")
    await live.waiter.until(ended(live, tid))
    view = live.view(tid)
    assert view.state is ThreadState.DONE and view.model == "sim/large"
    comments = [(e.payload["text"], e.payload["by"]) for e in live.kinds(tid, EventKind.COMMENT)]
    assert comments == [("Keep it short, please.", "human")]
    first_call = live.kinds(tid, EventKind.LLM_STARTED)[0]
    assert first_call.payload["guidance"] == ["Keep it short, please."]
    with pytest.raises(Exception, match="unknown agent"):
        live.sup.spawn("nobody", "x")
    with pytest.raises(Exception, match="already ended"):
        live.sup.pause(tid)
    with pytest.raises(Exception, match="already ended"):
        live.sup.reply(tid, "too late")
    assert len(live.kinds(tid, EventKind.COMMENT)) == 1


async def test_cost_matches_litellm_cost_map(live_factory) -> None:
    import litellm

    live = await live_factory(project(ASK_THEN_WRITE), FILES, approve="all")
    await live.waiter.until(ended(live, "t"))
    for ev in live.kinds("t", EventKind.LLM_FINISHED):
        u = ev.payload["usage"]
        p, c = litellm.cost_per_token(
            model=ev.payload["model"],
            prompt_tokens=u["prompt_tokens"],
            completion_tokens=u["completion_tokens"],
        )
        assert ev.payload["cost_usd"] == pytest.approx(p + c)
        assert ev.payload["cost_usd"] <= ev.payload["reserved_usd"] + 1e-12
        assert ev.payload["cost_usd"] > 0
