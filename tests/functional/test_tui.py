"""The TUI, driven through Textual's pilot: every verb, what the screen shows, and a clean exit.

Each test boots TowerApp (tests/tui_harness.py) on a small project of scripted `sim/instant`
threads written to tmp_path; threads stop in the inbox (ask_human, write_file approvals, budget
stops), so what the human does next is deterministic. Tests wait on conditions (a
`pilot.pause()` loop with an overall cap), never on fixed sleeps, and always shut the app down
cleanly, after which the SQLite log must hold every emitted event and a cleanly ended session.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandInput, CommandList, CommandPalette
from textual.widgets import DataTable, Input, Label, RichLog, Select, Static, TextArea
from textual.widgets._toast import Toast

from tests.helpers import write_project
from tests.tui_harness import (
    ASK,
    FILES,
    WRITE,
    drawn,
    pick_task,
    pilot_until,
    project,
    task,
    tui,
    waiting_on,
)
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.ui.app import VERBS, TowerApp
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import (
    AmountDialog,
    ArgsDialog,
    ConfirmDialog,
    GrantDialog,
    SpawnDialog,
    TextDialog,
)
from tower.ui.screens.help import HelpScreen
from tower.ui.screens.policy import PolicyScreen
from tower.ui.widgets.budget import BudgetBar
from tower.ui.widgets.inbox import InboxDetail

# --- spawn ----------------------------------------------------------------------------------


async def test_spawn_dialog_creates_a_thread_with_model_and_budget(tmp_path: Path) -> None:
    async with tui(tmp_path, project()) as t:
        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        dialog.query_one("#prompt", Input).focus()
        await t.press(*"say", "space", *"hi")  # letters that are verbs elsewhere
        assert dialog.query_one("#prompt", Input).value == "say hi"
        dialog.query_one("#model", Select).value = "sim/large"
        dialog.query_one("#budget", Input).focus()
        await t.press(*"0.05")
        await t.press("enter")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.until(lambda: len(t.state().threads) == 1, "one thread")
        (view,) = t.state().threads.values()
        assert view.agent == "a" and view.title == "say hi"
        assert view.model == "sim/large" and view.cascade[0] == "sim/large"
        assert view.budget_usd == pytest.approx(0.05)
        assert t.app.sup is not None and t.app.sup.runs[view.id].budget_usd == 0.05
        await t.until(lambda: t.view(view.id).step >= 1, "its first model call")
        await t.settle()
        row = t.row(view.id)
        assert "say hi" in row and " large " in row and "running" in row
        assert t.threads.current == view.id  # the new thread is selected
        assert any(f"spawned {view.id}" in s for s in t.toast_texts())


async def test_spawn_with_a_bad_budget_shows_an_error_and_spawns_nothing(tmp_path: Path) -> None:
    async with tui(tmp_path, project()) as t:
        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        dialog.query_one("#prompt", Input).value = "never spawned"
        dialog.query_one("#budget", Input).value = "-1"
        await t.press("ctrl+s")
        error = dialog.query_one("#error", Label)
        assert "positive" in str(error.content)
        assert "the budget must be a positive number" in drawn(error)
        assert t.app.screen is dialog  # still open, so the human can fix it
        dialog.query_one("#budget", Input).value = "0"
        await t.press("ctrl+s")
        assert t.app.screen is dialog
        dialog.query_one("#prompt", Input).value = ""
        dialog.query_one("#budget", Input).value = ""
        await t.press("ctrl+s")
        assert "describe the task first" in drawn(dialog.query_one("#error", Label))
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.settle()
        assert t.state().threads == {}
        assert t.rows() == []
        assert not [e for e in t.toast_texts() if "spawned" in e]


# --- pause ----------------------------------------------------------------------------------


async def test_pause_one_thread_then_resume(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        assert t.threads.current == "t-1"
        await t.press("p")
        sup = t.app.sup
        assert sup is not None
        assert t.view("t-1").pause_requested and not t.view("t-2").pause_requested
        assert any("pausing t-1" in s for s in t.toast_texts())
        # It waits for the human; the pause lands at its next checkpoint, after the answer.
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        dialog.query_one(Input).value = "2025"
        await t.press("enter")
        await t.until(lambda: t.view("t-1").state is ThreadState.PAUSED, "t-1 paused")
        await t.settle()
        assert "paused" in t.row("t-1") and "waiting" in t.row("t-2")
        assert t.view("t-2").state is ThreadState.WAITING
        steps = t.view("t-1").step
        await t.press("p")
        assert not t.view("t-1").pause_requested
        assert any("resumed t-1" in s for s in t.toast_texts())
        await t.until(
            lambda: [i.kind for i in t.items("t-1")] == [InboxKind.APPROVAL], "t-1 continues"
        )
        assert t.view("t-1").step == steps + 1
        await t.settle()
        assert "waiting" in t.row("t-1")


async def test_pause_all_and_resume_all(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=3), cap=1)) as t:
        await t.ready(waiting_on(t, 1), "one question, two queued")
        assert [t.view(x).state for x in ("t-1", "t-2", "t-3")] == [
            ThreadState.WAITING,
            ThreadState.QUEUED,
            ThreadState.QUEUED,
        ]
        sup = t.app.sup
        assert sup is not None
        await t.press("P")
        assert all(t.view(x).pause_requested for x in ("t-1", "t-2", "t-3"))
        assert any("pausing 3 thread(s)" in s for s in t.toast_texts())
        # queued threads pause at once; the waiting one at its next checkpoint
        assert t.view("t-2").state is ThreadState.PAUSED
        assert t.view("t-3").state is ThreadState.PAUSED
        await t.settle()
        assert "paused" in t.row("t-2") and "paused" in t.row("t-3")
        assert "3 paused" not in drawn(t.app.query_one(BudgetBar))
        assert "2 paused" in drawn(t.app.query_one(BudgetBar))
        await t.press("P")
        assert not any(t.view(x).pause_requested for x in ("t-1", "t-2", "t-3"))
        assert any("resumed 3 thread(s)" in s for s in t.toast_texts())
        assert t.view("t-2").state is ThreadState.QUEUED
        await t.settle()
        assert "queued" in t.row("t-2") and "queued" in t.row("t-3")


# --- kill -----------------------------------------------------------------------------------


async def test_kill_asks_first_and_n_cancels(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        await t.press("x")
        dialog = await t.screen_is(ConfirmDialog)
        assert "Kill thread t-1?" in drawn(dialog.query_one(Label))
        await t.press("n")
        await t.screen_is(type(t.app.get_default_screen()))
        assert t.view("t-1").state is ThreadState.WAITING
        assert len(t.items("t-1")) == 1


async def test_kill_confirmed_takes_effect_within_one_frame(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        assert len(t.inbox_rows()) == 2
        await t.press("x")
        await t.screen_is(ConfirmDialog)
        await t.press("y")
        await t.pilot.pause()
        assert t.view("t-1").state is ThreadState.KILLED
        assert t.items("t-1") == []
        assert t.view("t-2").state is ThreadState.WAITING and len(t.items("t-2")) == 1
        await t.settle()
        assert "killed" in t.row("t-1")
        rows = t.inbox_rows()
        assert len(rows) == 1 and "t-2" in rows[0] and "t-1" not in rows[0]
        assert "Inbox 1" in drawn(t.inbox)
        assert any("killed t-1" in s for s in t.toast_texts())


# --- escalate, hand to human -----------------------------------------------------------------


async def test_escalate_moves_to_the_next_model_and_hand_opens_an_item(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        await t.ready(waiting_on(t, 1), "a question")
        assert "instant" in t.row("t")
        await t.press("e")
        assert t.view("t").model == "sim/small"
        assert any("t escalated to sim/small" in s for s in t.toast_texts())
        await t.settle()
        assert " small " in t.row("t")
        await t.press("h")
        await t.until(lambda: len(t.items("t")) == 2, "a handoff item")
        kinds = [i.kind for i in t.items("t")]
        assert kinds == [InboxKind.QUESTION, InboxKind.ESCALATION]
        assert t.view("t").model == "sim/small"  # handing over keeps the model
        await t.settle()
        assert any(r.startswith("handoff") and " t " in r for r in t.inbox_rows())
        assert any("handed to you" in s for s in t.toast_texts())
        assert any(s.startswith("needs you · escalation") for s in t.toast_texts())
        await t.press("i", "down")  # the handoff, below the older question
        await t.settle()
        detail = drawn(t.app.query_one(InboxDetail))
        # What escalating would cost, against the minutes of attention a handoff takes.
        assert "≈ $" in detail and "to move to sim/large" in detail
        assert "2.0 min of your attention" in detail


# --- approve, deny, edit ---------------------------------------------------------------------


async def test_approve_unblocks_exactly_that_thread(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(WRITE, "w", repeat=3))) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        assert t.threads.current == "w-1"
        detail = drawn(t.app.query_one(InboxDetail))
        assert "write_file" in detail and "path        out.txt" in detail
        assert "+original" in detail  # the content, as a diff (a new file)
        await t.press("a")
        await t.until(lambda: t.view("w-1").state is ThreadState.DONE, "w-1 done")
        assert (t.workspace("w-1") / "out.txt").read_text() == "original"
        for other in ("w-2", "w-3"):
            assert t.view(other).state is ThreadState.WAITING
            assert [i.kind for i in t.items(other)] == [InboxKind.APPROVAL]
            assert not (t.workspace(other) / "out.txt").exists()
        await t.settle()
        assert "done" in t.row("w-1") and "waiting" in t.row("w-2")
        # The two left are one situation (the same call), expanded when w-1 was selected.
        rows = t.inbox_rows()
        assert rows[0].startswith("2× approve?") and "same call: write_file" in rows[0]
        assert sorted(r.split()[1] for r in rows[1:]) == ["w-2", "w-3"]


async def test_deny_refuses_the_tool_call(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(WRITE, "w"))) as t:
        await t.ready(waiting_on(t, 1, InboxKind.APPROVAL), "an approval")
        await t.press("d")
        await t.until(lambda: t.view("w").state.ended, "w ended")
        assert t.view("w").state is ThreadState.DONE  # the model went on and finished
        assert not (t.workspace("w") / "out.txt").exists()
        results = [e for e in await t.events("w") if e.kind is EventKind.TOOL_RESULT]
        assert results[0].payload["tool"] == "write_file"
        assert results[0].payload["ok"] is False
        assert "denied by the human" in results[0].payload["result"]


async def test_edit_arguments_then_approve(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(WRITE, "w"))) as t:
        await t.ready(waiting_on(t, 1, InboxKind.APPROVAL), "an approval")
        await t.press("E")
        dialog = await t.screen_is(ArgsDialog)
        # Field by field: the path in an Input, the content as text
        # (tests/functional/test_results_view.py covers $EDITOR and JSON fields).
        path, area = dialog.query_one("#arg-0", Input), dialog.query_one(TextArea)
        assert (path.value, area.text) == ("out.txt", "original")
        path.value = "edited.txt"
        area.text = "by hand"
        await t.press("ctrl+s")
        await t.until(lambda: t.view("w").state.ended, "w ended")
        assert t.view("w").state is ThreadState.DONE
        root = t.workspace("w")
        assert (root / "edited.txt").read_text() == "by hand"
        assert not (root / "out.txt").exists()
        closed = [e for e in await t.events("w") if e.kind is EventKind.INBOX_CLOSED]
        assert closed[0].payload["args"] == {"path": "edited.txt", "content": "by hand"}


# --- reply, comment --------------------------------------------------------------------------


async def test_reply_answers_a_question(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        await t.ready(waiting_on(t, 1, InboxKind.QUESTION), "a question")
        assert "Which year?" in drawn(t.app.query_one(InboxDetail))
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        assert "t asks: Which year?" in drawn(dialog.query_one(Label))
        await t.press(*"2025", "enter")
        await t.until(
            lambda: [i.kind for i in t.items("t")] == [InboxKind.APPROVAL], "the next step"
        )
        results = [e for e in await t.events("t") if e.kind is EventKind.TOOL_RESULT]
        assert results[0].payload == {
            "call_id": results[0].payload["call_id"],
            "tool": "ask_human",
            "ok": True,
            "result": "2025",
        }
        assert t.state().decisions == 1


async def test_reply_on_a_thread_without_an_item_is_a_comment(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        await t.ready(waiting_on(t, 1, InboxKind.QUESTION), "a question")
        await t.press("p", "r", *"2025", "enter")  # pause, then answer: it stops, no item
        await t.ready(lambda: t.view("t").state is ThreadState.PAUSED, "t paused")
        assert t.items() == []
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        assert "Comment to t" in drawn(dialog.query_one(Label))
        dialog.query_one(Input).value = "mind the units"
        await t.press("enter")
        comments = [e for e in await t.events("t") if e.kind is EventKind.COMMENT]
        assert [c.payload for c in comments] == [{"text": "mind the units", "by": "human"}]
        assert any(s.endswith("| sent") for s in t.toast_texts())
        # the comment reaches the model with its next call
        await t.press("p")
        await t.until(lambda: t.items("t"), "t's next step")
        assert t.app.sup is not None
        messages = t.app.sup.runs["t"].messages
        assert any("mind the units" in (m.get("content") or "") for m in messages)


async def test_verbs_on_a_thread_without_items_leave_other_threads_items_alone(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2), cap=1)) as t:
        await t.ready(waiting_on(t, 1), "t-1 asks, t-2 queued")
        await t.press("down")
        assert t.threads.current == "t-2" and t.items("t-2") == []
        await t.press("d")  # nothing of t-2's to deny, and t-1's item is not t-2's
        await t.press("a")
        assert not isinstance(t.app.screen, TextDialog)  # a on a question would open a reply
        assert [i.kind for i in t.items("t-1")] == [InboxKind.QUESTION]
        assert t.toast_texts().count(" | t-2 has nothing waiting for you") == 2
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        assert "Comment to t-2" in drawn(dialog.query_one(Label))
        dialog.query_one(Input).value = "wait for t-1"
        await t.press("enter")
        assert [i.kind for i in t.items("t-1")] == [InboxKind.QUESTION]
        comments = [e for e in await t.events("t-2") if e.kind is EventKind.COMMENT]
        assert [c.payload["text"] for c in comments] == ["wait for t-1"]


# --- allow like this (a time-boxed grant) ----------------------------------------------------


async def test_allow_like_grants_a_timeboxed_rule_for_same_tool_and_agent(tmp_path: Path) -> None:
    toml = project(
        task(WRITE, "w", repeat=2),
        task(WRITE, "v", agent="b"),
        task(WRITE.replace("write_file", "list_dir"), "l"),
        extra='\n[policy]\nask = ["write_file", "list_dir"]\n',
    )
    async with tui(tmp_path, toml) as t:
        await t.ready(waiting_on(t, 4, InboxKind.APPROVAL), "four approvals")
        assert t.threads.current == "w-1"
        await t.press("A")
        dialog = await t.screen_is(GrantDialog)
        assert dialog.query_one("#arg-path", Input).value == "out.txt"
        dialog.query_one("#minutes", Input).value = "5"
        await t.press("enter")
        assert t.items("w-1") == [] and t.items("w-2") == []
        assert len(t.items("v")) == 1 and len(t.items("l")) == 1
        assert any(
            "allowed write_file path=out.txt for agent a for 5 min" in s for s in t.toast_texts()
        )
        await t.until(
            lambda: all(t.view(x).state is ThreadState.DONE for x in ("w-1", "w-2")), "w done"
        )
        assert (t.workspace("w-1") / "out.txt").exists()
        assert (t.workspace("w-2") / "out.txt").exists()
        assert not (t.workspace("v") / "out.txt").exists()
        assert t.view("v").state is ThreadState.WAITING
        assert t.view("l").state is ThreadState.WAITING
        grants = [e for e in await t.events(None) if e.kind is EventKind.RULE_GRANTED]
        assert len(grants) == 1
        rule = grants[0].payload["rule"]
        assert (rule["tool"], rule["args"], rule["agent"]) == (
            "write_file",
            {"path": "out.txt"},
            "a",
        )
        assert 299 <= rule["expires"] - grants[0].ts <= 301
        closed = {
            e.payload["item"]: e.payload["by"]
            for e in await t.events(None)
            if e.kind is EventKind.INBOX_CLOSED
        }
        # The item A was pressed on is the human's decision; the other one the rule's.
        assert sorted(closed.values()) == ["human", f"rule {rule['id']}"]
        await t.settle()
        rows = t.inbox_rows()
        assert len(rows) == 2 and any(" v " in r for r in rows) and any(" l " in r for r in rows)


async def test_policy_screen_lists_rules_grants_and_revokes(tmp_path: Path) -> None:
    toml = project(
        task(WRITE, "w", repeat=2),
        extra='\n[policy]\ndeny = [{ tool = "run_shell", args = { command = "rm *" } }]\n',
    )
    async with tui(tmp_path, toml) as t:
        await t.ready(waiting_on(t, 2, InboxKind.APPROVAL), "two approvals")
        rid = await t.app.core.call(  # type: ignore[union-attr]
            lambda: t.app.sup.grant("read_file", {"path": "docs/**"}, agent="a", minutes=10)
        )
        await t.press("o")
        screen = await t.screen_is(PolicyScreen)
        table = screen.query_one("#rules", DataTable)
        rows = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
        assert rows[0][:3] == ["deny", "run_shell", "command=rm *"]
        assert rows[1][:4] == ["allow", "read_file", "path=docs/**", "a"]
        assert rows[1][4].startswith(("9m", "10m"))
        assert any(r[1] == "everything else" and r[0] == "ask" for r in rows)
        table.move_cursor(row=1)
        await t.press("d")
        await t.until(lambda: rid not in t.state().grants, "grant revoked")
        ended = [e for e in await t.events(None) if e.kind is EventKind.RULE_ENDED]
        assert [(e.payload["rule"], e.payload["reason"]) for e in ended] == [(rid, "revoked")]
        await t.press("escape")
        await t.until(lambda: not isinstance(t.app.screen, PolicyScreen), "policy closed")


# --- budget items ----------------------------------------------------------------------------

BUDGET = """
[budget]
thread_usd = 0.0005

[[tasks]]
id = "b"
agent = "a"
prompt = "list"
repeat = 2

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


async def test_budget_items_raise_by_typed_amount_and_by_suggestion(tmp_path: Path) -> None:
    async with tui(tmp_path, project(BUDGET)) as t:
        await t.ready(waiting_on(t, 2, InboxKind.BUDGET), "two budget stops")
        assert all(t.view(x).state is ThreadState.PAUSED for x in ("b-1", "b-2"))
        await t.settle()
        assert "thread budget" in drawn(t.app.query_one(InboxDetail))
        stops = [s for s in t.toast_texts() if s.startswith("budget stop |")]
        assert all(any(tid in s for s in stops) for tid in ("b-1", "b-2")), stops
        assert all(n.severity == "error" for n in t.toasts if n.title == "budget stop")
        # b: raise by a typed amount
        assert t.threads.current == "b-1"
        await t.press("b")
        dialog = await t.screen_is(AmountDialog)
        box = dialog.query_one(Input)
        box.value = "0.01"
        await t.press("enter")
        await t.until(lambda: t.view("b-1").state is ThreadState.DONE, "b-1 done")
        assert t.view("b-1").budget_usd == pytest.approx(0.0105)
        assert any("budget raised by $0.0100" in s for s in t.toast_texts())
        # a: raise by the suggestion
        await t.press("down")
        assert t.threads.current == "b-2"
        (item,) = t.items("b-2")
        suggestion = item.data["suggest_usd"]
        assert suggestion > 0
        starts = len([e for e in await t.events("b-2") if e.kind is EventKind.LLM_STARTED])
        await t.press("a")
        assert t.view("b-2").budget_usd == pytest.approx(0.0005 + suggestion)
        await t.until(
            lambda: t.view("b-2").state is ThreadState.DONE or t.items("b-2"), "b-2 goes on"
        )
        after = [e for e in await t.events("b-2") if e.kind is EventKind.LLM_STARTED]
        assert len(after) > starts
        raised = [e for e in await t.events("b-2") if e.kind is EventKind.BUDGET_RAISED]
        assert raised[0].payload["usd"] == suggestion


# --- jumping between items, focus, filter, sort ---------------------------------------------


async def test_next_and_previous_item(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=3))) as t:
        await t.ready(waiting_on(t, 3), "three questions")
        order = [i.id for i in t.items()]
        owner = {i.id: i.thread for i in t.items()}
        assert t.threads.has_focus

        async def jump(key: str, index: int) -> None:
            await t.press(key)
            assert t.inbox.has_focus
            assert t.inbox.current == order[index]
            assert t.threads.current == owner[order[index]]
            assert f"{owner[order[index]]} (a)" in drawn(t.app.query_one(InboxDetail))

        # From the thread list the selected thread's own item is shown; ] moves on from it.
        mine = next(i for i in order if owner[i] == t.threads.current)
        start = order.index(mine)
        assert f"{owner[mine]} (a)" in drawn(t.app.query_one(InboxDetail))
        await jump("right_square_bracket", (start + 1) % 3)
        await jump("right_square_bracket", (start + 2) % 3)
        await jump("right_square_bracket", start)  # wraps
        await jump("left_square_bracket", (start + 2) % 3)
        await jump("left_square_bracket", (start + 1) % 3)


async def test_tab_cycles_focus_between_threads_and_inbox(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        assert t.app.focused is t.threads
        await t.press("tab")
        assert t.app.focused is t.inbox
        await t.press("tab")
        assert t.app.focused is t.threads
        await t.press("shift+tab")
        assert t.app.focused is t.inbox
        await t.press("t")
        assert t.app.focused is t.threads
        await t.press("i")
        assert t.app.focused is t.inbox


async def test_filter_narrows_the_list_and_escape_clears(tmp_path: Path) -> None:
    toml = project(
        task(ASK, "alpha", prompt="alpha report"),
        task(ASK, "beta", prompt="beta summary", repeat=2),
        task(ASK, "gamma", prompt="gamma notes"),
    )
    async with tui(tmp_path, toml) as t:
        await t.ready(waiting_on(t, 4), "four questions")
        assert len(t.rows()) == 4
        await t.press("slash")
        box = t.app.query_one("#filter", Input)
        assert box.has_focus and box.display
        await t.press(*"beta")  # letters that are verbs elsewhere go to the box
        assert box.value == "beta"
        await t.until(lambda: "filter “beta”" in drawn(t.threads), "the filter drawn")
        assert all("beta summary" in r for r in t.rows())
        assert len(t.rows()) == 2 and "Threads 2/4" in drawn(t.threads)
        assert all(not v.state.ended for v in t.state().threads.values())
        await t.press("enter")  # keeps the filter, back to the list
        assert t.threads.has_focus and len(t.rows()) == 2
        await t.press("slash", "escape")
        await t.until(lambda: len(t.rows()) == 4, "all rows back")
        assert box.value == "" and not box.display
        assert t.threads.has_focus


async def test_sort_cycles_and_reverse(tmp_path: Path) -> None:
    toml = project(
        task(ASK, "zeta", prompt="z"),
        task(ASK, "alpha", prompt="a"),
        task(ASK, "mid", prompt="m"),
    )
    async with tui(tmp_path, toml) as t:
        await t.ready(waiting_on(t, 3), "three questions")
        ids = lambda: [r.split()[1] for r in t.rows()]  # noqa: E731
        assert ids() == ["zeta", "alpha", "mid"]  # spawned order
        await t.press("s")
        assert t.threads.sort_key == "id"
        await t.until(lambda: ids() == ["alpha", "mid", "zeta"], "sorted by id")
        assert "ID▼" in t.threads.render_line(0).text
        assert "sort id" in drawn(t.threads)
        await t.press("S")
        await t.until(lambda: ids() == ["zeta", "mid", "alpha"], "reversed")
        assert "ID▲" in t.threads.render_line(0).text
        await t.press("S", "s")
        assert t.threads.sort_key == "state"
        await t.until(lambda: "sort state" in drawn(t.threads), "sort state")
        assert "STATE▼" in t.threads.render_line(0).text


# --- command palette, help -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["colon", "ctrl+p"])
async def test_command_palette_runs_a_verb(tmp_path: Path, key: str) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        await t.press(key)
        palette = t.app.screen
        assert isinstance(palette, CommandPalette)
        await t.press(*"Pause")
        assert palette.query_one(CommandInput).value == "Pause"
        commands = palette.query_one(CommandList)
        await t.until(
            lambda: commands.option_count >= 2 and commands.highlighted == 0, "palette hits"
        )
        prompts = [str(commands.get_option_at_index(i).prompt) for i in range(2)]
        assert prompts[0].startswith("Pause: pause or resume the selected thread")
        assert prompts[1].startswith("Pause all: pause or resume every thread")
        assert "key: p" in drawn(commands)
        await t.press("enter")
        sup = t.app.sup
        assert sup is not None
        await t.until(lambda: t.view("t-1").pause_requested, "t-1 pausing")
        assert not isinstance(t.app.screen, CommandPalette)
        assert not t.view("t-2").pause_requested


async def test_help_lists_every_key(tmp_path: Path) -> None:
    async with tui(tmp_path, project()) as t:
        await t.press("question_mark")
        screen = await t.screen_is(HelpScreen)
        text = drawn(screen.query(Static).first())
        for bid, *_ in VERBS:
            assert bid in text, bid
            assert t.app.key_of(bid) in text, bid
        for line in ("enter", "tab", "escape"):
            assert line in text
        assert "kill the selected thread" in text
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))


# --- the thread detail screen ---------------------------------------------------------------


async def test_detail_screen_shows_transcript_and_costs_and_verbs_work_there(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        await t.press("down")
        assert t.threads.current == "t-2"
        await t.press("r", *"2025", "enter")
        await t.until(lambda: [i.kind for i in t.items("t-2")] == [InboxKind.APPROVAL], "t-2")
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert screen.thread == "t-2"
        log = screen.query_one(RichLog)
        table = screen.query_one(DataTable)

        def transcript() -> str:
            return "\n".join(strip.text for strip in log.lines)

        await t.until(lambda: "write_file" in transcript(), "transcript")
        text = transcript()
        assert "task: do it" in text
        assert '→ ask_human({"question": "Which year?"})' in text
        assert "← ask_human: 2025" in text
        assert '→ write_file({"path": "out.txt", "content": "2025"})' in text
        assert table.row_count == 2  # two model calls so far
        assert [str(c) for c in table.get_row_at(0)][:2] == ["1", "sim/instant"]
        assert "$" in str(table.get_row_at(1)[4])
        assert "t-2 · a · waiting" in drawn(screen.query_one("#head", Static))
        # verbs act on this screen's thread
        await t.press("p")
        sup = t.app.sup
        assert sup is not None
        assert t.view("t-2").pause_requested and not t.view("t-1").pause_requested
        await t.press("a")
        await t.until(lambda: t.view("t-2").state is ThreadState.PAUSED, "t-2 paused")
        await t.until(lambda: "● paused" in transcript(), "live events in the transcript")
        assert "approved by human" in transcript()
        assert (t.workspace("t-2") / "out.txt").read_text() == "2025"
        await t.press("p")
        await t.until(lambda: t.view("t-2").state is ThreadState.DONE, "t-2 done")
        await t.until(lambda: "● done — finished" in transcript(), "done in the transcript")
        assert table.row_count == 3
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))
        assert t.view("t-1").state is ThreadState.WAITING


async def test_leaving_the_detail_screen_stops_feeding_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        await t.ready(waiting_on(t, 1, InboxKind.QUESTION), "a question")
        await t.press("enter")
        await t.screen_is(ThreadScreen)
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        dialog.query_one(Input).value = "2025"
        await t.press("enter")
        await t.ready(lambda: [i.kind for i in t.items("t")] == [InboxKind.APPROVAL], "next")
        failures = [r for r in caplog.records if "event subscriber failed" in r.getMessage()]
        assert failures == []


# --- quitting -------------------------------------------------------------------------------


async def test_quit_asks_while_threads_run_and_flushes_the_log(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t", repeat=2))) as t:
        await t.ready(waiting_on(t, 2), "two questions")
        await t.press("q")
        dialog = await t.screen_is(ConfirmDialog)
        assert "2 thread(s) have not finished" in drawn(dialog.query_one(Label))
        await t.press("n")
        await t.screen_is(type(t.app.get_default_screen()))
        assert not t.app.closed and t.app.is_running
        await t.press("q")
        await t.screen_is(ConfirmDialog)
        await t.press("y")
        await t.until(lambda: not t.app.is_running, "the app exits")
    assert t.app.return_code == 0
    assert t.app.closed  # the harness then checks: every event is in the log, session clean


async def test_quit_without_live_threads_exits_at_once(tmp_path: Path) -> None:
    done = task(WRITE.replace("write_file", "list_dir"), "d")
    async with tui(tmp_path, project(done)) as t:
        await t.until(lambda: t.state().all_ended and t.state().threads, "all done")
        await t.press("q")
        await t.until(lambda: not t.app.is_running, "the app exits")
    assert t.app.return_code == 0


async def test_verbs_arriving_during_shutdown_are_ignored(tmp_path: Path) -> None:
    """Keys typed right after q (the rest of a word) reach the app after the core stopped."""
    done = task(WRITE.replace("write_file", "list_dir"), "d")
    async with tui(tmp_path, project(done)) as t:
        await t.until(lambda: t.state().all_ended and t.state().threads, "all done")
        await t.app.shutdown()
        for action in ("escalate", "pause", "pause_all", "hand", "approve", "deny"):
            await t.app.run_action(action)  # the dispatch a key binding uses
        assert t.app.is_running
        t.app.exit(0)
        await t.until(lambda: not t.app.is_running, "the app exits")
    assert t.app.return_code == 0


# --- notifications --------------------------------------------------------------------------


async def test_toasts_for_new_items_and_failures_not_for_progress(tmp_path: Path) -> None:
    toml = project(
        task(ASK, "ask"),
        task(WRITE.replace("write_file", "list_dir"), "fine"),
        task(WRITE.replace("write_file", "list_dir"), "bad", agent="short"),
        extra='\n[[agents]]\nname = "short"\ncascade = ["sim/instant"]\nmax_steps = 1\n',
    )
    async with tui(tmp_path, toml) as t:
        await t.until(
            lambda: (
                t.view("fine").state is ThreadState.DONE
                and t.view("bad").state is ThreadState.FAILED
                and len(t.items("ask")) == 1
            ),
            "one done, one failed, one asking",
        )
        await t.settle()
        assert sorted((n.title, n.message, n.severity) for n in t.toasts) == [
            ("needs you · question", "ask: Which year?", "warning"),
            ("thread failed", "bad: max_steps: 1 model calls without finishing", "error"),
        ]  # and none for "fine", which finished: routine progress is not news
        await t.until(lambda: len(t.app.screen.query(Toast)) == 2, "two toasts on screen")
        shown = " ".join(drawn(toast) for toast in t.app.screen.query(Toast))
        assert "ask: Which year?" in shown and "bad: max_steps" in shown
        assert t.toast_texts() == [f"{n.title} | {n.message}" for n in t.app._notifications]


# --- the budget bar -------------------------------------------------------------------------

# $1 a token, one output token per call: a call costs exactly what it reserved, in whole
# dollars, so the bar's levels can be reached exactly.
DOLLAR = """
[budget]
usd = 1

[models."sim/instant"]
input_usd_per_mtok = 1000000
output_usd_per_mtok = 1000000

[[agents]]
name = "one"
cascade = ["sim/instant"]
max_tokens = 1

[[tasks]]
id = "c"
agent = "one"
prompt = "count"

[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_budget_bar_levels(tmp_path: Path) -> None:
    async with tui(tmp_path, project(DOLLAR)) as t:
        bar = t.app.query_one(BudgetBar)
        await t.ready(waiting_on(t, 1, InboxKind.BUDGET), "a session budget stop")
        (item,) = t.items("c")
        assert item.data["scope"] == "session"
        need = item.data["need_usd"]
        assert need > 1 and need == int(need)
        await t.settle()
        assert not bar.has_class("-warning") and not bar.has_class("-error")
        assert "$0.0000 spent" in drawn(bar) and "limit $1.00 (0%)" in drawn(bar)
        # raise the session to exactly the first call's cost: it runs and uses 100 %
        await t.press("b")
        dialog = await t.screen_is(AmountDialog)
        dialog.query_one(Input).value = str(need - 1)
        await t.press("enter")
        await t.until(lambda: len(t.items("c")) == 1 and t.items("c")[0].id != item.id, "next")
        assert t.state().budget.spent_usd == need == t.state().budget.limit_usd
        await t.settle()
        assert bar.has_class("-error")
        text = drawn(bar)
        assert f"${need:,.4f} spent" in text and f"limit ${need:,.2f} (100%)" in text
        assert not bar.has_class("-warning")
        # raise by a tenth: 1/1.1 = 91 % used, and still not enough for the next call
        await t.press("b")
        dialog = await t.screen_is(AmountDialog)
        dialog.query_one(Input).value = str(need / 10)
        await t.press("enter")
        await t.until(lambda: t.state().budget.limit_usd == need * 1.1, "raised")
        await t.settle()
        assert bar.has_class("-warning") and not bar.has_class("-error")
        assert "(91%)" in drawn(bar)
        assert t.items("c") and t.view("c").state is ThreadState.PAUSED
        # a on the budget item raises by the suggestion: back to normal, the thread finishes
        await t.press("a")
        await t.until(lambda: t.view("c").state is ThreadState.DONE, "c done")
        await t.until(
            lambda: not bar.has_class("-warning") and not bar.has_class("-error"), "ok level"
        )


# --- keymap ---------------------------------------------------------------------------------


async def test_keymap_remaps_kill(tmp_path: Path) -> None:
    async with tui(tmp_path, project(task(ASK, "t")), keymap={"kill": "X"}) as t:
        await t.ready(waiting_on(t, 1), "a question")
        await t.press("x")
        await t.pilot.pause()
        assert not isinstance(t.app.screen, ConfirmDialog)
        assert t.view("t").state is ThreadState.WAITING
        assert t.app.key_of("kill") == "X"
        await t.press("X")
        await t.screen_is(ConfirmDialog)
        await t.press("y")
        await t.pilot.pause()
        assert t.view("t").state is ThreadState.KILLED


# --- sessions and resume in the TUI ----------------------------------------------------------


async def test_sessions_screen_lists_this_session(tmp_path: Path) -> None:
    from tower.ui.screens.sessions import SessionsScreen

    async with tui(tmp_path, project(task(ASK, "t"))) as t:
        await t.ready(waiting_on(t, 1), "a question")
        await t.press("L")
        screen = await t.screen_is(SessionsScreen)
        table = screen.query_one("#sessions")
        assert table.row_count == 1
        assert t.app.sup is not None
        assert t.app.sup.session_id in str(screen.query_one("#hint").render())
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))


async def test_a_crashed_session_is_offered_for_resume_on_start(tmp_path: Path) -> None:
    import sqlite3

    from tower.core.project import load_project as load
    from tower.core.session import run_headless
    from tower.ui.screens.dialogs import ConfirmDialog

    root = write_project(tmp_path / "proj", project(task(ASK, "t")), FILES)
    db = tmp_path / "t.db"
    first = await run_headless(load(root), db, "none")
    session = first.summary["session"]
    with sqlite3.connect(db) as conn:  # as if the process had died with the thread waiting
        conn.execute(
            "DELETE FROM events WHERE session = ? AND seq > (SELECT min(seq) FROM events"
            " WHERE session = ? AND kind = 'inbox_opened')",
            (session, session),
        )
        conn.execute("UPDATE sessions SET status = 'running', ended = NULL, pid = 999999999")
    app = TowerApp(load(root), db, watch=False)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the offer")
        assert session in str(app.screen.question)
        await pilot.press("y")
        await pilot_until(pilot, app.booted.is_set, "the app boots")
        assert app.sup is not None and app.sup.session_id == session
        await pilot_until(
            pilot, lambda: any(i.thread == "t" for i in app.state().inbox.values()), "t asks"
        )
        await app.shutdown()
        app.exit(0)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


# --- dialogs are boxes over the screen, not the screen --------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConfirmDialog("Kill t-1?"),
        lambda: TextDialog("Reply to t-1"),
        lambda: ArgsDialog("write_file", {"path": "a.txt"}),
        lambda: GrantDialog("write_file", {"path": "src/**"}, "a"),
    ],
)
async def test_dialogs_are_centred_boxes(make: Callable[[], Any]) -> None:
    from textual.app import App
    from textual.containers import Vertical

    app: App[None] = App()
    async with app.run_test(size=(160, 45)) as pilot:
        app.push_screen(make())
        await pilot.pause()
        box = app.screen.query_one(Vertical).region
        assert box.width <= 80 and box.x > 0 and box.y > 0
        assert abs((box.x + box.width / 2) - 80) <= 1


# --- experiment from the palette -------------------------------------------------------------

CHECKED = """
[[tasks]]
id = "c"
agent = "a"
prompt = "answer"

[tasks.check]
answer_contains = ["42"]

[[tasks.script]]
tool = "finish"
args = { answer = "it is 42" }
wrong_args = { answer = "it is 41" }
"""


async def test_palette_experiment_runs_the_variants_side_by_side(tmp_path: Path) -> None:
    from tower.ui.screens.experiment import ExperimentScreen

    files = {
        **FILES,
        "experiments/cheap.toml": '[[agents]]\nname = "a"\ncascade = ["sim/small", "sim/large"]\n'
        '[models."sim/small"]\nwrong_rate = 1.0\n',
        "experiments/strong.toml": '[[agents]]\nname = "a"\ncascade = ["sim/large"]\n',
    }
    async with tui(tmp_path, project(CHECKED), files) as t:
        await t.ready(lambda: t.state().all_ended and bool(t.state().threads), "live run done")
        await t.press("ctrl+p")
        await t.press(*"Experiment")
        palette = t.app.screen
        commands = palette.query_one(CommandList)
        await t.until(lambda: commands.option_count >= 1, "palette hit")
        assert str(commands.get_option_at_index(0).prompt).startswith("Experiment: run")
        await t.press("enter")
        screen = await t.screen_is(ExperimentScreen)
        await t.until(lambda: screen.done, "experiment done", timeout=30)
        grid = screen.query_one("#scores", DataTable)
        rows = {str(grid.get_row_at(i)[0]): grid.get_row_at(i) for i in range(grid.row_count)}
        assert set(rows) == {"cheap", "strong"}
        assert str(rows["cheap"][1]).startswith("1/1") and str(rows["strong"][1]).startswith("1/1")
        cols = [str(c.label) for c in grid.columns.values()]
        esc, ses = cols.index("escalations/task"), cols.index("session")
        assert "saved by caching" in cols
        assert str(rows["cheap"][esc]) == "1.00"  # the wrong answer escalated once
        assert str(rows["strong"][esc]) == "0.00"
        con = sqlite3.connect(t.db)
        recorded = {r[0] for r in con.execute("SELECT id FROM sessions")}
        con.close()
        assert {str(rows["cheap"][ses]), str(rows["strong"][ses])} <= recorded
        await t.press("escape")
        await t.until(lambda: not isinstance(t.app.screen, ExperimentScreen), "closed")


# --- spawn from a project task --------------------------------------------------------------

SPAWN_TASKS = task(ASK, "review", prompt="review the notes") + task(
    WRITE, "screen", repeat=2, agent="b", prompt="screen candidate {n}"
)


async def test_spawn_from_a_task_keeps_its_id_pattern_workspace_and_script(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, project(SPAWN_TASKS)) as t:
        await t.ready(waiting_on(t, 3), "the project's threads wait")
        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        await pick_task(t, dialog, 1)
        assert dialog.chosen is not None and dialog.chosen.thread_id == "review-2"
        info = drawn(dialog.query_one("#task-info", Label))
        assert "thread id: review-2" in info and "agent a" in info
        assert "workspace: ws/" in info
        assert "script: 3 step(s)" in info and "check: none" in info
        assert dialog.query_one("#prompt", Input).value == "review the notes"
        assert dialog.query_one("#workspace", Input).value == "ws"
        assert dialog.query_one("#workspace", Input).disabled
        assert dialog.query_one("#agent", Select).value == "a"
        assert dialog.focused is dialog.query_one("#prompt", Input)  # enter spawns from here
        await t.press("enter")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.ready(lambda: len(t.items("review-2")) == 1, "review-2 asks its question")
        view = t.view("review-2")
        assert view.title == "review the notes" and view.agent == "a"
        assert t.items("review-2")[0].data["question"] == "Which year?"  # the task's script
        assert t.threads.current == "review-2" and "review the notes" in t.row("review-2")
        assert any("spawned review-2" in s for s in t.toast_texts())
        assert (t.workspace("review-2") / "readme.txt").read_text() == "hello\n"
        assert t.workspace("review-2") != t.workspace("review")  # its own copy of ws
        events = await t.events("review-2")
        (born,) = [e for e in events if e.kind is EventKind.THREAD_SPAWNED]
        assert born.payload["task"] == "review" and born.payload["prompt"] == "review the notes"
        called = [e.payload for e in events if e.kind is EventKind.TOOL_CALLED]
        assert called[0]["tool"] == "ask_human"
        assert called[0]["args"] == {"question": "Which year?"}


async def test_spawn_from_a_repeated_task_fills_n_and_takes_the_next_copy(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, project(SPAWN_TASKS)) as t:
        await t.ready(waiting_on(t, 3), "the project's threads wait")
        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        await pick_task(t, dialog, 2)
        info = drawn(dialog.query_one("#task-info", Label))
        assert "thread id: screen-3" in info and "agent b" in info
        assert "workspace: none" in info and "script: 2 step(s)" in info
        assert dialog.query_one("#prompt", Input).value == "screen candidate 3"
        assert dialog.query_one("#agent", Select).value == "b"
        dialog.query_one("#budget", Input).value = "0.25"  # the human's budget wins
        await t.press("enter")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.ready(lambda: len(t.items("screen-3")) == 1, "screen-3 asks to write")
        view = t.view("screen-3")
        assert view.title == "screen candidate 3" and view.budget_usd == 0.25
        assert t.items("screen-3")[0].data["tool"] == "write_file"
        assert t.threads.current == "screen-3"


async def test_spawn_a_typed_task_in_a_workspace_folder(tmp_path: Path) -> None:
    async with tui(tmp_path, project()) as t:
        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        await t.press(*"look", "tab", *"../elsewhere")
        assert dialog.query_one("#workspace", Input).value == "../elsewhere"
        await t.press("enter")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.until(
            lambda: any("not a folder inside the project" in s for s in t.toast_texts()),
            "the refusal, as a toast",
        )
        assert t.state().threads == {}  # nothing spawned

        await t.press("n")
        dialog = await t.screen_is(SpawnDialog)
        await t.press(*"look", "tab", *"ws", "enter")
        await t.screen_is(type(t.app.get_default_screen()))
        await t.ready(lambda: "a" in t.state().threads, "the thread")
        sup = t.app.sup
        assert sup is not None
        assert sup.runs["a"].workspace_src == sup.project.root / "ws"
        await t.until(lambda: sup.runs["a"].workspace is not None, "its workspace")
        assert (t.workspace("a") / "readme.txt").read_text() == "hello\n"
