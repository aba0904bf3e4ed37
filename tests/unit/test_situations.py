"""The inbox as situations (pure): grouping by cause, what resolving costs, the digest, and the
attention clock that measures the person's time apart from the time items waited."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tower.core.attention import AttentionClock
from tower.core.events import Event, EventKind, InboxKind, ThreadState
from tower.core.situations import DIGEST_KEY, is_routine, situations
from tower.core.state import InboxItem, ThreadView, TowerState, apply


def thread(
    state: TowerState,
    tid: str,
    st_: ThreadState = ThreadState.WAITING,
    cost: float = 0,
    task: str = "t",
) -> None:
    state.threads[tid] = ThreadView(
        tid, "a", task, tid, ["sim/small"], "sim/small", 0, 0.0, state=st_, cost_usd=cost
    )
    state.recount()  # built by hand, not by the reducer


def item(state: TowerState, iid: str, tid: str, kind: InboxKind, at: float, **data) -> None:
    if tid not in state.threads:
        thread(state, tid)
    state.inbox[iid] = InboxItem(iid, tid, kind, at, {"item": iid, "kind": str(kind), **data})


def write(path: str) -> dict:
    return {"tool": "write_file", "args": {"path": path, "content": "x"}, "suggest": {"path": path}}


def test_single_items_stay_items_and_keep_their_age_order() -> None:
    s = TowerState()
    item(s, "i2", "t2", InboxKind.QUESTION, 2.0, question="why?")
    item(s, "i1", "t1", InboxKind.APPROVAL, 1.0, **write("a.py"))
    item(s, "i3", "t3", InboxKind.APPROVAL, 3.0, **write("b.py"))
    sits = situations(s)
    assert [x.key for x in sits] == ["i1", "i2", "i3"]
    assert all(not x.is_group and len(x.items) == 1 for x in sits)


def test_the_same_call_from_many_threads_is_one_situation() -> None:
    s = TowerState()
    for n in range(5):
        item(s, f"i{n}", f"t{n}", InboxKind.APPROVAL, float(n), **write("shared.txt"))
    item(s, "i9", "t9", InboxKind.APPROVAL, 0.5, **write("other.txt"))
    sits = situations(s)
    group = next(x for x in sits if x.is_group)
    assert group.items == ("i0", "i1", "i2", "i3", "i4")
    assert group.threads == ("t0", "t1", "t2", "t3", "t4")
    assert "same call: write_file shared.txt" in group.row_text
    assert [x.key for x in sits if not x.is_group] == ["i9"]
    # Oldest situation first: the group's oldest item opened at 0.0.
    assert sits[0] is group


def test_interrupted_calls_are_never_grouped() -> None:
    s = TowerState()
    for n in range(3):
        item(s, f"i{n}", f"t{n}", InboxKind.APPROVAL, float(n), interrupted=True, **write("a"))
    assert len(situations(s)) == 3


def test_session_budget_stop_is_priced_at_the_measured_cost_per_thread() -> None:
    """market_analysis's stop: cheap headline threads finished first, the screens left cost
    more; each is priced at its own task's measured cost, minus what a stopped one spent,
    plus the worst case its next call reserves."""
    s = TowerState()
    s.budget.limit_usd = 0.085
    s.budget.spent_usd = 0.085
    for n in range(80):
        thread(s, f"headline-{n}", ThreadState.DONE, cost=0.0006, task=f"headline-{n}")
    for n in range(40):
        thread(s, f"screen-{n}", ThreadState.DONE, cost=0.0008, task=f"screen-{n}")
    for n in range(100, 162):
        thread(s, f"screen-{n}", ThreadState.QUEUED, task=f"screen-{n}")
    for n in range(16):
        tid = f"screen-{200 + n}"
        thread(s, tid, ThreadState.PAUSED, cost=0.0005, task=tid)
        item(
            s, f"i{n}", tid, InboxKind.BUDGET, float(n), scope="session", resource="usd",
            suggest_usd=0.0004, need_usd=0.0005,
        )  # fmt: skip
    (group,) = situations(s)
    assert group.is_group and len(group.items) == 16
    assert group.cause == "16 thread(s) stopped by the session budget"
    # 62 x 0.0008 + 16 x (0.0008 - 0.0005) + 16 x 0.0005 = 0.0624, rounded up to 2 digits.
    assert group.suggest_usd == pytest.approx(0.063)
    assert "+$0.063 lets the 16 stopped and 62 queued finish" in group.resolve
    assert "$0.0008 per thread" in group.resolve


def test_one_session_budget_item_is_still_priced_for_the_whole_queue() -> None:
    s = TowerState()
    thread(s, "d", ThreadState.DONE, cost=0.002)
    for n in range(5):
        thread(s, f"q{n}", ThreadState.QUEUED)
    item(s, "i1", "b", InboxKind.BUDGET, 1.0, scope="session", resource="usd", suggest_usd=0.0001)
    (sit,) = situations(s)
    assert sit.key == "i1" and not sit.is_group  # the row is the item
    assert sit.suggest_usd == pytest.approx(0.012)  # 5 queued and the stopped one at 0.002
    assert "5 queued" in sit.resolve


def test_without_a_finished_thread_the_raise_is_the_largest_suggestion() -> None:
    s = TowerState()
    for n in range(3):
        item(
            s, f"i{n}", f"b{n}", InboxKind.BUDGET, n, scope="session", resource="usd",
            suggest_usd=0.004 + n / 1000,
        )  # fmt: skip
    (group,) = situations(s)
    assert group.suggest_usd == pytest.approx(0.006)
    assert "each stopped thread" in group.resolve


def test_sub_agents_stopped_by_one_ancestors_cap_are_one_situation_per_ancestor() -> None:
    s = TowerState()
    for n in range(3):
        item(
            s, f"i{n}", f"lead.{n}", InboxKind.BUDGET, float(n), scope="subtree",
            account="lead", resource="usd", suggest_usd=0.001 * (n + 1), reason="r",
        )  # fmt: skip
    item(
        s, "i9", "other.1", InboxKind.BUDGET, 0.5, scope="subtree", account="other",
        resource="usd", suggest_usd=0.002, reason="r",
    )  # fmt: skip
    sits = situations(s)
    lead = next(x for x in sits if x.items == ("i0", "i1", "i2"))
    assert lead.cause == "3 sub-agent(s) stopped by lead's subtree budget"
    assert lead.suggest_usd == pytest.approx(0.003)  # one raise of the lead's cap
    assert "one raise wakes them all" in lead.resolve
    # Another ancestor's cap is another cause; alone, its item is just the item.
    assert [x.key for x in sits if x.items == ("i9",)] == ["i9"]


def test_mcp_server_down_groups_its_calls() -> None:
    s = TowerState()
    s.mcp["board"] = {"status": "crashed", "tools": []}
    for n in range(3):
        item(
            s, f"i{n}", f"t{n}", InboxKind.APPROVAL, n, tool="board__post",
            args={"text": f"review {n}"},
        )  # fmt: skip
    (group,) = situations(s)
    assert group.key == "g:mcp:board" and "MCP server board is crashed" in group.row_text
    s.mcp["board"]["status"] = "ready"  # up again: three different calls, three items
    assert len(situations(s)) == 3


def test_the_same_handoff_reason_groups() -> None:
    s = TowerState()
    for n in range(4):
        item(s, f"i{n}", f"t{n}", InboxKind.ESCALATION, n, reason="3 tool errors in a row")
    (group,) = situations(s)
    assert group.kind is InboxKind.ESCALATION and len(group.items) == 4


def test_routine_items_wait_in_a_digest_once_the_attention_budget_is_spent() -> None:
    s = TowerState()
    item(s, "i1", "t1", InboxKind.APPROVAL, 1.0, **write("a.py"))  # a grant could decide it
    item(s, "i2", "t2", InboxKind.QUESTION, 2.0, question="which year?")  # never routine
    item(
        s, "i3", "t3", InboxKind.BUDGET, 3.0, scope="thread", resource="usd", suggest_usd=0.002
    )  # under the threshold
    item(
        s, "i4", "t4", InboxKind.BUDGET, 4.0, scope="session", resource="usd", suggest_usd=0.5
    )  # over it
    assert [x.key for x in situations(s, human_minutes_cap=5)] == ["i1", "i2", "i3", "i4"]
    s.human_seconds = 5 * 60
    sits = situations(s, human_minutes_cap=5, routine_usd=0.01)
    assert [x.key for x in sits] == ["i2", "i4", DIGEST_KEY]
    assert sits[-1].items == ("i1", "i3") and sits[-1].routine
    assert is_routine(s.inbox["i1"], 0.01) and not is_routine(s.inbox["i4"], 0.01)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(InboxKind)),
            st.sampled_from(["a.py", "b.py"]),
            st.sampled_from(["session", "thread", "subtree"]),
        ),
        max_size=30,
    ),
    st.booleans(),
)
def test_every_open_item_is_in_exactly_one_situation(specs, digest: bool) -> None:
    s = TowerState()
    s.human_seconds = 600 if digest else 0
    for n, (kind, path, scope) in enumerate(specs):
        item(
            s, f"i{n}", f"t{n % 7}", kind, float(n), scope=scope, resource="usd",
            suggest_usd=0.001, reason="r", question="q", account=f"t{n % 2}", **write(path),
        )  # fmt: skip
    sits = situations(s, human_minutes_cap=1)
    members = [i for x in sits for i in x.items]
    assert sorted(members) == sorted(s.inbox)
    assert len({x.key for x in sits}) == len(sits)


# --- the reducer keeps attention and blocked time apart -------------------------------------


def _ev(seq: int, ts: float, ek: EventKind, thread: str | None = None, **p) -> Event:
    return Event(seq, ts, ek, thread, p)


def test_attention_and_blocked_time_are_counted_apart() -> None:
    state = TowerState()
    apply(state, _ev(1, 0.0, EventKind.SESSION_STARTED, session="s", project="p"))
    spawn = {"agent": "a", "task": "t", "title": "t", "cascade": ["m"], "model": "m"}
    for n in range(14):
        apply(state, _ev(2 + n, 0.0, EventKind.THREAD_SPAWNED, f"t{n}", priority=0, **spawn))
        apply(
            state, _ev(20 + n, 0.0, EventKind.INBOX_OPENED, f"t{n}", item=f"i{n}", kind="approval")
        )
    # An hour later the person declines all 14 in five seconds.
    for n in range(14):
        apply(
            state,
            _ev(
                40 + n, 3600.0 + n * 5 / 14, EventKind.INBOX_CLOSED, f"t{n}", item=f"i{n}",
                resolution="denied", by="human", attention_s=5 / 14,
            ),
        )  # fmt: skip
    assert state.human_seconds == pytest.approx(5.0)
    assert state.blocked_seconds > 14 * 3600
    assert state.decisions == 14
    assert state.threads["t3"].human_seconds == pytest.approx(5 / 14)
    assert state.threads["t3"].blocked_seconds == pytest.approx(3600 + 3 * 5 / 14)


def test_rule_decisions_cost_no_attention_and_block_no_one() -> None:
    state = TowerState()
    apply(state, _ev(1, 0.0, EventKind.INBOX_OPENED, "t", item="i1", kind="approval"))
    apply(
        state,
        _ev(2, 9.0, EventKind.INBOX_CLOSED, "t", item="i1", resolution="approved", by="rule:x"),
    )
    assert state.human_seconds == 0 and state.blocked_seconds == 0 and state.decisions == 0


# --- the attention clock ---------------------------------------------------------------------


def test_clock_counts_from_shown_to_decision() -> None:
    c = AttentionClock(idle_cap_s=30)
    c.showing(100.0)
    c.activity(102.0)
    assert c.take(104.0) == pytest.approx(4.0)
    assert c.take(105.5) == pytest.approx(1.5)  # the next item is timed from the decision


def test_clock_caps_idle_gaps_and_stops_while_hidden() -> None:
    c = AttentionClock(idle_cap_s=30)
    c.showing(0.0)
    c.activity(600.0)  # ten minutes away from the keyboard count as 30 s
    assert c.take(602.0) == pytest.approx(32.0)
    c.hidden(610.0)  # focus lost (or nothing to decide): 8 s counted, then the clock stops
    c.activity(5000.0)  # keys elsewhere while hidden do not count
    c.showing(6000.0)
    assert c.take(6003.0) == pytest.approx(8.0 + 3.0)


def test_fourteen_declines_in_five_seconds_are_five_seconds() -> None:
    c = AttentionClock()
    c.showing(0.0)
    spent = [c.take(n * 5 / 13) for n in range(14)]
    assert sum(spent) == pytest.approx(5.0)
