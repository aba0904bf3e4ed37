"""Sub-agents: a thread starts children with spawn_agent (gated by the policy) and gets their
answers with wait_agents. A child's spending counts against its parent's cap, every
ancestor's and the session's; depth and fan-out are bounded by the project; a parent's end
ends its children; a crash anywhere in a tree resumes without a child spawned twice or a
recorded call made again."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from tests.conftest import ended
from tests.helpers import write_project
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.core.payloads import ThreadSpawned, payload_as
from tower.core.project import load_project
from tower.core.replay import export_csv
from tower.core.session import run_headless
from tower.core.state import subtree
from tower.core.store import Store
from tower.core.subagents import tree_lines
from tower.core.tools import ToolError

HEAD = """
[project]
name = "subs"
seed = 1
retry_backoff_s = 0
max_retries = 0

[limits]
max_depth = {depth}
max_children = {children}

[policy]
allow = {allow}

[[agents]]
name = "lead"
cascade = ["sim/instant"]
tools = ["list_dir", "spawn_agent", "wait_agents", "finish"]

[[agents]]
name = "reader"
cascade = ["sim/instant"]
tools = ["read_file", "finish"]
"""

LEAD = """
[[tasks]]
id = "lead"
agent = "lead"
workspace = "ws"
prompt = "Review every file of the folder with one reader each, then merge."
{budget}

[[tasks.script]]
tool = "list_dir"
args = {{ path = "." }}

[[tasks.script]]
tool = "spawn_agent"
each = "file"
args = {{ agent = "reader", prompt = "Read {{file}} and report.", title = "read {{file}}" }}

[[tasks.script]]
tool = "wait_agents"

[[tasks.script]]
tool = "finish"
args = {{ answer = "merged:\\n{{last_result}}" }}
"""

FILES = {"ws/a.py": "def alpha():\n    return 1\n", "ws/b.md": "# notes\n", "ws/c.txt": "x\n"}


def _toml(
    depth: int = 2, children: int = 8, allow: str = '["spawn_agent"]', budget: str = ""
) -> str:
    return HEAD.format(depth=depth, children=children, allow=allow) + LEAD.format(budget=budget)


async def _events(db: Path) -> list:
    store = await Store.open(db)
    try:
        (row,) = await store.list_sessions()
        return [ev async for ev in store.events(row.id)]
    finally:
        await store.close()


async def test_a_lead_fans_out_one_child_per_file_and_merges_their_answers(
    tmp_path: Path,
) -> None:
    root = write_project(tmp_path / "proj", _toml(), FILES)
    db = tmp_path / "t.db"
    result = await run_headless(load_project(root), db, "all")
    threads = result.state.threads
    assert {t: v.state for t, v in threads.items()} == dict.fromkeys(
        ["lead", "lead.1", "lead.2", "lead.3"], ThreadState.DONE
    )
    events = await _events(db)
    spawns = {
        e.thread: payload_as(e, ThreadSpawned)
        for e in events
        if e.kind is EventKind.THREAD_SPAWNED and e.thread != "lead"
    }
    # Each child's edge and the call that made it are in the log, one call per file.
    calls = {
        e.payload["call_id"]: e.payload["args"]["prompt"]
        for e in events
        if e.kind is EventKind.TOOL_CALLED and e.payload["tool"] == "spawn_agent"
    }
    assert {c: (s.parent, calls[s.spawned_by or ""]) for c, s in spawns.items()} == {
        "lead.1": ("lead", "Read a.py and report."),
        "lead.2": ("lead", "Read b.md and report."),
        "lead.3": ("lead", "Read c.txt and report."),
    }
    # Each child read its own file; the lead's answer merges theirs.
    assert threads["lead.1"].answer == "a.py: 2 line(s); defines alpha."
    assert threads["lead.2"].answer == "b.md: 1 line(s)."
    answer = threads["lead"].answer or ""
    for child in ("lead.1", "lead.2", "lead.3"):
        assert f"## {child} (done, $" in answer
        assert (threads[child].answer or "") in answer
    # The lead's subtree is its own spending and its children's, nothing else.
    lead = threads["lead"]
    kids = sum(threads[c].cost_usd for c in lead.children)
    assert lead.children == ["lead.1", "lead.2", "lead.3"]
    assert lead.subtree_usd == pytest.approx(lead.cost_usd + kids)
    assert lead.subtree_usd == pytest.approx(result.state.budget.spent_usd)
    assert lead.subtree_usd > lead.cost_usd > 0
    assert result.summary["subtrees"] == {
        "lead": {
            "threads": 4,
            "cost_usd": round(lead.subtree_usd, 6),
            "tokens": lead.subtree_tokens,
        }
    }
    # Headless output draws the tree.
    lines = tree_lines(result.state)
    assert [ln.split()[0] for ln in lines] == ["lead", "├─", "├─", "└─"]
    assert lines[0].split()[1] == "done" and "subtree $" in lines[0]
    assert [ln.split()[1] for ln in lines[1:]] == ["lead.1", "lead.2", "lead.3"]
    # The export carries each thread's parent and its subtree's totals.
    store = await Store.open(db)
    out = io.StringIO()
    await export_csv(store, result.summary["session"], out)
    await store.close()
    rows = {r["thread"]: r for r in csv.DictReader(io.StringIO(out.getvalue()))}
    assert rows["lead.2"]["parent"] == "lead" and rows["lead.2"]["depth"] == "1"
    assert rows["lead"]["parent"] == ""
    assert float(rows["lead"]["subtree_cost_usd"]) == pytest.approx(lead.subtree_usd)
    assert float(rows["lead.2"]["subtree_cost_usd"]) == pytest.approx(threads["lead.2"].cost_usd)


async def test_spawn_agent_asks_the_person_unless_the_policy_allows_it(live_factory) -> None:
    """spawn_agent is gated like any tool: with no rule it waits for approval, and
    denying it starts nothing."""
    live = await live_factory(_toml(allow="[]"), FILES)
    await live.waiter.until(
        lambda: "lead" in live.bus.state.threads and live.view("lead").pending > 0
    )
    item = live.item_of("lead")
    data = live.bus.state.inbox[item].data
    assert (live.bus.state.inbox[item].kind, data["tool"]) == (InboxKind.APPROVAL, "spawn_agent")
    live.sup.deny(item, "not now")
    await live.waiter.until(lambda: live.view("lead").pending > 0 or live.view("lead").state.ended)
    assert "lead.1" not in live.bus.state.threads  # the denied call started nothing


async def test_fan_out_and_depth_are_bounded_by_the_project(tmp_path: Path) -> None:
    """max_children = 2: the third spawn is refused with a reason the model can act on;
    max_depth = 1 and an agent that spawns: a child cannot start children of its own."""
    root = write_project(tmp_path / "proj", _toml(children=2), FILES)
    result = await run_headless(load_project(root), tmp_path / "t.db", "all")
    assert sorted(result.state.threads) == ["lead", "lead.1", "lead.2"]
    events = await _events(tmp_path / "t.db")
    refused = [
        e.payload["result"]
        for e in events
        if e.kind is EventKind.TOOL_RESULT
        and e.payload["tool"] == "spawn_agent"
        and not e.payload["ok"]
    ]
    assert refused == [
        "error: you have started 2 sub-agents, the most the project allows "
        "(limits.max_children); wait for them or do the rest yourself"
    ]
    # wait_agents gives the two that ran; the lead still finishes.
    assert result.state.threads["lead"].state is ThreadState.DONE


async def test_a_child_cannot_go_deeper_than_max_depth(live_factory) -> None:
    toml = _toml(depth=1, budget="budget_usd = 0.5").replace(
        'tools = ["read_file", "finish"]', 'tools = ["read_file", "spawn_agent", "finish"]'
    )
    live = await live_factory(toml, FILES, approve="all")
    await live.waiter.until(lambda: "lead.1" in live.bus.state.threads)
    child = live.sup.runs["lead.1"]
    with pytest.raises(ToolError, match=r"limits.max_depth"):
        live.sup.spawn_agent(child, {"prompt": "go deeper"}, "c-x")
    lead = live.sup.runs["lead"]
    with pytest.raises(ToolError, match=r"budget_usd 2 is more than the \$0\.\d{4} you have left"):
        live.sup.spawn_agent(lead, {"prompt": "p", "budget_usd": 2}, "c-y")
    with pytest.raises(ToolError, match="no agent template 'ghost'"):
        live.sup.spawn_agent(lead, {"prompt": "p", "agent": "ghost"}, "c-z")
    await live.waiter.until(ended(live, "lead"))


async def test_a_child_is_bounded_by_its_parents_cap_and_the_person_raises_it(
    live_factory,
) -> None:
    """The lead's cap is its subtree's: with it nearly spent, a child's call is refused by
    the lead's cap (not its own, which it does not have), the inbox names the lead's
    subtree, and raising that item raises the lead's cap so the child finishes."""
    live = await live_factory(_toml(budget="budget_usd = 0.0009"), FILES)
    await live.waiter.until(
        lambda: any(
            i.kind is InboxKind.BUDGET and i.thread.startswith("lead.")
            for i in live.bus.state.inbox.values()
        )
    )
    item = next(i for i in live.bus.state.inbox.values() if i.kind is InboxKind.BUDGET)
    assert (item.data["scope"], item.data["account"]) == ("subtree", "lead")
    assert "lead's subtree budget" in item.data["reason"]
    # Nothing the subtree holds or spent passes the lead's cap.
    lead_acct = live.sup.ledger.threads["lead"]
    assert lead_acct.spent_usd + lead_acct.reserved_usd <= 0.0009 + 1e-12
    views = [live.view(t) for t in ("lead", "lead.1", "lead.2", "lead.3")]
    assert sum(v.cost_usd + v.reserved_usd for v in views) <= 0.0009 + 1e-12
    live.sup.raise_budget(item.id, usd=0.01)
    assert live.sup.ledger.threads["lead"].limit_usd == pytest.approx(0.0109)
    assert live.view("lead").budget_usd == pytest.approx(0.0109)  # the screen sees it too
    # Every budget item the children open is answered the same way until all finish.
    while not live.view("lead").state.ended:
        await live.waiter.until(
            lambda: (
                live.view("lead").state.ended
                or any(i.kind is InboxKind.BUDGET for i in live.bus.state.inbox.values())
            )
        )
        for i in list(live.bus.state.inbox.values()):
            if i.kind is InboxKind.BUDGET:
                live.sup.raise_budget(i.id, usd=0.01)
    assert live.view("lead").state is ThreadState.DONE


async def test_a_parent_that_ends_ends_its_children(live_factory) -> None:
    """Killing the lead while its children wait for approval kills them too: no child
    runs (or spends) after its parent is gone. Meanwhile the lead says what it waits on."""
    toml = _toml(allow='["spawn_agent"]\nask = [{ tool = "read_file", agent = "reader" }]')
    live = await live_factory(toml, FILES)
    await live.waiter.until(lambda: "lead.3" in live.bus.state.threads)
    await live.waiter.until(lambda: all(live.view(f"lead.{k}").pending for k in (1, 2, 3)))
    await live.waiter.until(lambda: "waiting on" in live.view("lead").reason)
    lead = live.view("lead")
    assert lead.state is ThreadState.RUNNING
    assert lead.reason == "waiting on 3 of 3 sub-agent(s): lead.1, lead.2, lead.3"
    live.sup.kill("lead")
    await live.waiter.until(ended(live, "lead", "lead.1", "lead.2", "lead.3"))
    for child in ("lead.1", "lead.2", "lead.3"):
        v = live.view(child)
        assert v.state is ThreadState.KILLED
        assert v.reason == "its parent lead ended (killed)"
        assert v.pending == 0  # its approval left the inbox with it
    assert live.sup.ledger.threads["lead"].reserved_usd == pytest.approx(0, abs=1e-12)


async def test_a_crash_anywhere_in_a_tree_resumes_without_spawning_or_billing_twice(
    tmp_path: Path,
) -> None:
    """The log cut after every event in turn, then resumed: each cut ends with the same
    answers; every child is spawned once (a spawn_agent call the crash interrupted finds
    the child it made), no recorded model call is made again, and the lead's account
    holds its whole subtree's spending when the run goes on."""
    import re

    from tests.functional.test_resume import _crashed_copy
    from tower.core.session import resume_headless

    root = write_project(tmp_path / "proj", _toml(), FILES)
    ref = await run_headless(load_project(root), tmp_path / "ref.db", "all", None)
    session = ref.summary["session"]
    events = await _events(tmp_path / "ref.db")

    def plain(answer: str | None) -> str | None:  # costs differ when a cut call is booked
        return re.sub(r"\$\d+\.\d+", "$", answer) if answer is not None else None

    answers = {t: plain(v.answer) for t, v in ref.state.threads.items()}
    ends = [i for i, ev in enumerate(events) if ev.kind is EventKind.SESSION_ENDED]
    spawn_cuts = 0
    for k in range(1, ends[0]):
        last = events[k - 1]
        if last.kind is EventKind.TOOL_CALLED and last.payload["tool"] == "spawn_agent":
            spawn_cuts += 1
        db = await _crashed_copy(tmp_path / f"cut{k}.db", session, "subs", root, events[:k])
        result = await resume_headless(db, session, "all", None)
        got = {t: plain(v.answer) for t, v in result.state.threads.items()}
        assert got == answers, (k, got)
        after = await _events(db)
        spawned = [e.thread for e in after if e.kind is EventKind.THREAD_SPAWNED]
        assert sorted(spawned) == sorted(set(spawned)), (k, spawned)
        finished = [
            (e.thread, e.payload["step"]) for e in after if e.kind is EventKind.LLM_FINISHED
        ]
        assert len(finished) == len(set(finished)), k  # no step answered (billed) twice
        lead = result.state.threads["lead"]
        assert lead.subtree_usd == pytest.approx(
            sum(v.cost_usd + v.lost_usd for v in result.state.threads.values())
        )
    assert spawn_cuts >= 3  # cuts between a spawn_agent call and its child were tried


async def test_a_fork_mid_tree_goes_on_from_the_recorded_children(tmp_path: Path) -> None:
    """A fork taken after the children were spawned and one of them answered: the fork's
    history is the original's, the children are not spawned again, no recorded call is
    made again, and the lead still merges every child's answer."""
    from tower.core.session import fork_headless

    root = write_project(tmp_path / "proj", _toml(), FILES)
    db = tmp_path / "t.db"
    original = await run_headless(load_project(root), db, "all")
    source = await _events(db)
    first_child_done = next(
        e.seq
        for e in source
        if e.kind is EventKind.THREAD_STATE
        and e.thread == "lead.1"
        and e.payload["state"] == "done"
    )
    fork = await fork_headless(db, original.summary["session"], first_child_done, "all")
    store = await Store.open(db)
    forked = [ev async for ev in store.events(fork.summary["session"])]
    await store.close()
    later = forked[first_child_done:]
    assert not [e for e in later if e.kind is EventKind.THREAD_SPAWNED]
    before = {
        (e.thread, e.payload["step"])
        for e in source[:first_child_done]
        if e.kind is EventKind.LLM_FINISHED
    }
    again = {(e.thread, e.payload["step"]) for e in later if e.kind is EventKind.LLM_FINISHED}
    assert again and not before & again
    threads = fork.state.threads
    assert {t: v.state for t, v in threads.items()} == {
        t: v.state for t, v in original.state.threads.items()
    }
    for child in ("lead.1", "lead.2", "lead.3"):
        assert (threads[child].answer or "") in (threads["lead"].answer or "")


async def test_an_experiment_counts_a_task_with_its_sub_agents_as_one_task(
    tmp_path: Path,
) -> None:
    """tower experiment scores tasks: the lead and its three readers are one task, whose
    cost is its subtree's (the readers' calls included)."""
    from tower.core.experiment import run_experiment

    root = write_project(tmp_path / "proj", _toml(), FILES)
    (root / "experiments").mkdir()
    strong = root / "experiments" / "strong.toml"
    strong.write_text('[[agents]]\nname = "reader"\ncascade = ["sim/large"]\n')
    plain = root / "experiments" / "same.toml"
    plain.write_text("[project]\nseed = 1\n")
    scores = await run_experiment(root, [plain, strong], tmp_path / "e.db")
    by = {s.name: s for s in scores}
    for s in scores:
        assert (s.tasks, s.successes) == (1, 1)
    # The readers' model changed only in `strong`: the task costs more there, through them.
    assert by["strong"].cost_usd > by["same"].cost_usd * 3
    store = await Store.open(tmp_path / "e.db")
    rows = {r.id: r for r in await store.list_sessions()}
    await store.close()
    assert set(rows) == {s.session for s in scores}


async def test_a_wide_tree_under_load_never_passes_the_parents_cap(live_factory) -> None:
    """120 children at once under a lead whose cap covers a fraction of them, 16 calls in
    flight: after every event, the lead's subtree (the ledger's books and, independently,
    the screen's views) stays within the lead's cap; the children it could not pay for
    end failed with the reason (headless: nobody raises the cap)."""
    files = {f"ws/f{i:03}.txt": f"line {i}\n" for i in range(120)}
    cap = 0.004
    live = await live_factory(_toml(children=150, budget=f"budget_usd = {cap}"), files, "none")
    worst: list[float] = []

    def check(_ev: object) -> None:
        acct = live.sup.ledger.threads.get("lead")
        if acct is None:
            return
        assert acct.spent_usd + acct.reserved_usd <= cap + 1e-12
        views = [live.bus.state.threads[t] for t in subtree(live.bus.state, "lead")]
        held = sum(v.cost_usd + v.reserved_usd for v in views)
        assert held <= cap + 1e-9
        worst.append(held)

    live.bus.subscribe(check)
    await live.waiter.until(ended(live, "lead"), timeout=120)
    await live.waiter.until(
        lambda: all(v.state.ended for v in live.bus.state.threads.values()), timeout=120
    )
    threads = live.bus.state.threads
    kids = [v for t, v in threads.items() if t.startswith("lead.")]
    assert len(kids) == 120
    failed = [v for v in kids if v.state is ThreadState.FAILED]
    assert failed and all(v.reason == "budget" for v in failed)
    assert any(v.state is ThreadState.DONE for v in kids)
    assert threads["lead"].subtree_usd <= cap + 1e-9
    assert max(worst) > cap * 0.7  # the cap really bound: the subtree came close to it
