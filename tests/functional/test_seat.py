"""The orchestrator's seat, through Textual's pilot: every verb acts on exactly what the
screen shows, in every focus state; situations settle with one key; attention is measured.

Each test reads what is drawn (the selection bar above the footer, the inbox detail pane),
presses the key, and then checks the log: the items that closed are exactly the items that
were displayed, and no other.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, TextArea

from tests.tui_harness import BASE, FILES, Tui, drawn, tui, waiting_on
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.ui.format import usd
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import AmountDialog, ArgsDialog, ConfirmDialog, TextDialog
from tower.ui.widgets.inbox import InboxDetail
from tower.ui.widgets.selection import SelectionBar


def writer(tid: str, path: str, repeat: int = 1) -> str:
    return f"""
[[tasks]]
id = "{tid}"
agent = "a"
prompt = "write {path}"
repeat = {repeat}

[[tasks.script]]
say = "Writing {path}."
tool = "write_file"
args = {{ path = "{path}", content = "from {tid}" }}

[[tasks.script]]
tool = "finish"
args = {{ answer = "ok" }}
"""


IDLE = """
[[tasks]]
id = "idle"
agent = "b"
prompt = "nothing"
priority = 5

[[tasks.script]]
tool = "finish"
args = { answer = "nothing to do" }
"""

# Three threads, three different writes: three separate items. "idle" ends at once, with
# nothing waiting; its higher priority puts it first in the thread list.
THREE = BASE.format(cap=16) + IDLE + writer("w1", "a.txt") + writer("w2", "b.txt")
THREE += writer("w3", "c.txt")


def bar(t: Tui) -> str:
    return drawn(t.app.query_one(SelectionBar))


def shown_items(t: Tui) -> set[str]:
    """The item ids the screen names as the target (selection bar, or the group's list)."""
    text = bar(t)
    if "marked:" in text:
        return set(re.findall(r"\bi\d+\b", text.split("marked:")[1].split("  ")[0]))
    match = re.search(r"▶ (i\d+) ·", text)
    if match:
        return {match.group(1)}
    detail = drawn(t.app.query_one(InboxDetail))
    group = re.search(r"items\s+\d+ \(([^)]*)\)", detail)
    return set(group.group(1).split()) if group else set()


async def closed_items(t: Tui) -> list[str]:
    return [e.payload["item"] for e in await t.events(None) if e.kind is EventKind.INBOX_CLOSED]


async def finish_dialog(t: Tui, verb: str) -> None:
    """Completes the dialog a verb opens, as a person would."""
    if verb in ("D", "r"):
        dialog = await t.screen_is(TextDialog)
        dialog.query_one(Input).value = "not this way"
        await t.press("enter")
    elif verb == "E":
        dialog = await t.screen_is(ArgsDialog)
        area = dialog.query(TextArea)
        if area:
            area.first().text = "edited"
        await t.press("ctrl+s")
    elif verb == "A":
        await t.until(lambda: type(t.app.screen).__name__ == "GrantDialog", "grant dialog")
        await t.press("enter")
    elif verb == "b":
        dialog = await t.screen_is(AmountDialog)
        dialog.query_one(Input).value = "0.01"
        await t.press("enter")


async def act_and_check(t: Tui, verb: str) -> None:
    """Press the verb; the items that then close are exactly the ones that were shown."""
    await t.settle()
    shown = shown_items(t)
    assert shown, bar(t)
    assert t.app.shown is not None and set(t.app.shown.items) == shown
    before = set(await closed_items(t))
    await t.press(verb)
    await finish_dialog(t, verb)
    await t.until(lambda: not (shown & set(t.state().inbox)), f"{shown} decided")
    await t.settle()
    after = set(await closed_items(t)) - before
    assert after == shown, (verb, shown, after)


# --- every verb, every focus state: the item acted on is the item displayed -----------------

VERBS = ["a", "d", "D", "r", "E", "A"]


@pytest.mark.parametrize("verb", VERBS)
async def test_from_the_thread_list_verbs_act_on_the_selected_threads_shown_item(
    tmp_path: Path, verb: str
) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        assert t.threads.has_focus
        await t.press("down", "down")  # past idle, onto the second writer in the list
        tid = t.threads.current
        assert tid in ("w1", "w2", "w3")
        await t.settle()
        (mine,) = [i.id for i in t.items(tid)]
        assert shown_items(t) == {mine}  # the selected thread's own item is the one shown
        assert f"{tid} (a)" in drawn(t.app.query_one(InboxDetail))
        await act_and_check(t, verb)


@pytest.mark.parametrize("verb", VERBS)
async def test_from_the_inbox_verbs_act_on_the_row_under_the_cursor(
    tmp_path: Path, verb: str
) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("i", "end")  # the newest item, not the oldest
        await t.settle()
        assert t.inbox.has_focus
        last = t.inbox.current
        assert shown_items(t) == {last}
        # The thread list follows the inbox: the highlighted thread owns the shown item.
        assert t.threads.current == t.state().inbox[last].thread
        await act_and_check(t, verb)


@pytest.mark.parametrize("verb", ["a", "d", "D", "r"])
async def test_on_a_threads_own_screen_verbs_act_on_its_oldest_item(
    tmp_path: Path, verb: str
) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("down", "down", "down")
        tid = t.threads.current
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        await t.settle()
        (mine,) = [i.id for i in t.items(tid)]
        assert mine in drawn(screen.query_one("#target"))
        assert t.app.shown is not None and t.app.shown.items == (mine,)
        before = set(await closed_items(t))
        await t.press(verb)
        await finish_dialog(t, verb)
        await t.until(lambda: mine not in t.state().inbox, "decided")
        assert set(await closed_items(t)) - before == {mine}


@pytest.mark.parametrize("verb", ["a", "d", "D", "r", "E", "A", "b"])
async def test_a_thread_with_nothing_waiting_gets_no_other_threads_item(
    tmp_path: Path, verb: str
) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.until(lambda: t.view("idle").state.ended, "idle ended")
        assert t.threads.current == "idle"
        await t.settle()
        assert "idle (nothing waiting)" in bar(t)
        assert "idle has nothing waiting for you" in drawn(t.app.query_one(InboxDetail))
        assert t.app.shown is None
        await t.press(verb)
        if verb in ("r", "b"):  # a comment to the thread / a session raise: not an item
            await t.press("escape")
        await t.settle()
        assert len(t.items()) == 3 and await closed_items(t) == []


# --- situations: one key per cause ----------------------------------------------------------

SAME = BASE.format(cap=16) + writer("s", "same.txt", repeat=4)


@pytest.mark.parametrize("verb", ["a", "d", "A"])
async def test_one_key_settles_the_same_call_from_many_threads(tmp_path: Path, verb: str) -> None:
    async with tui(tmp_path, SAME) as t:
        await t.ready(waiting_on(t, 4, InboxKind.APPROVAL), "four identical approvals")
        # The selected thread's item is shown inside its group, opened for it.
        assert len(t.inbox_rows()) == 5 and t.inbox.current == t.items(t.threads.current)[0].id
        await t.press("i", "home", "left")  # the group row, closed
        await t.settle()
        rows = t.inbox_rows()
        assert len(rows) == 1 and rows[0].startswith("4× approve?"), rows
        assert "same call: write_file" in rows[0]
        assert "the same call from 4 threads: write_file same.txt" in drawn(t.app.inbox_detail)
        assert "4 threads" in rows[0]
        assert len(shown_items(t)) == 4
        await act_and_check(t, verb)
        want = ThreadState.DONE
        await t.until(lambda: all(v.state is want for v in t.state().threads.values()), "done")
        written = [(t.workspace(f"s-{n}") / "same.txt").exists() for n in range(1, 5)]
        assert written == [verb != "d"] * 4


async def test_marked_items_are_decided_together_and_only_they(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("i", "home", "space", "down", "space")  # mark the 1st and 3rd rows
        await t.settle()
        rows = t.inbox.rows
        marked = {rows[0], rows[2]}
        assert t.inbox.marked == marked
        assert shown_items(t) == marked
        lines = [t.inbox.render_line(y).text for y in range(1, 4)]
        assert [line.startswith("✓") for line in lines] == [True, False, True]
        await act_and_check(t, "d")
        assert [i.id for i in t.items()] == [rows[1]]
        assert t.inbox.marked == set()


SESSION_BUDGET = (
    BASE.format(cap=3)
    + """
[budget]
usd = 0.0004

[[tasks]]
id = "m"
agent = "a"
prompt = "list"
repeat = 8

[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "list_dir"
[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""
)


async def test_raising_the_session_budget_wakes_every_thread_it_stopped(tmp_path: Path) -> None:
    async with tui(tmp_path, SESSION_BUDGET) as t:
        stopped = lambda: [i for i in t.items() if i.kind is InboxKind.BUDGET]  # noqa: E731
        await t.ready(lambda: len(stopped()) == 3, "three threads stopped by the session budget")
        await t.press("i", "home", "left")
        await t.settle()
        rows = t.inbox_rows()
        assert len(rows) == 1 and rows[0].startswith("3× budget"), rows
        detail = drawn(t.app.query_one(InboxDetail))
        assert "3 thread(s) stopped by the session budget" in detail
        # The amount `a` raises by is on screen before the key.
        amount = t.app.shown.situation.suggest_usd  # type: ignore[union-attr]
        assert amount and amount > 0
        assert f"raise the session budget by {usd(amount, 2)}" in bar(t)
        limit = t.state().budget.limit_usd
        ids = {i.id for i in stopped()}
        await t.press("a")
        await t.until(lambda: not ids & set(t.state().inbox), "every stopped thread woken")
        raised = [e for e in await t.events(None) if e.kind is EventKind.BUDGET_RAISED]
        assert len(raised) == 1 and raised[0].payload["usd"] == pytest.approx(amount)
        assert t.state().budget.limit_usd == pytest.approx((limit or 0) + amount)
        closed = [
            e.payload
            for e in await t.events(None)
            if e.kind is EventKind.INBOX_CLOSED and e.payload["resolution"] == "raised"
        ]
        assert len(closed) == 3  # all three threads woke, not only the one under the cursor


# --- attention ------------------------------------------------------------------------------


async def test_human_minutes_are_the_time_spent_deciding_not_waiting(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    async with tui(tmp_path, SAME.replace("repeat = 4", "repeat = 6"), clock=lambda: clock[0]) as t:
        await t.ready(waiting_on(t, 6, InboxKind.APPROVAL), "six approvals")
        await t.press("i", "home", "right")  # expand the group: decide one by one
        await t.settle()
        clock[0] += 3600  # the items wait an hour; the person is away
        await t.press("down")  # back: a key, then six declines, one second apart
        for _ in range(6):
            await t.settle()
            clock[0] += 1.0
            await t.press("d")
        await t.until(lambda: t.state().decisions == 6, "six decisions")
        await t.settle()
        state = t.state()
        # Seconds spent deciding: the idle hour counts at most 30 s, then 6 x 1 s.
        assert state.human_seconds == pytest.approx(36.0)
        assert state.blocked_seconds >= 6 * 3600
        assert "you 0.6 min on 6 decision(s)" in drawn(t.app.budget_bar)
        assert "blocked on you 36" in drawn(t.app.budget_bar)


async def test_past_the_attention_budget_routine_items_wait_in_a_digest(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    toml = BASE.format(cap=1) + "[budget]\nhuman_minutes = 0.01\n" + writer("w1", "a.txt")
    toml += writer("w2", "b.txt")
    async with tui(tmp_path, toml, clock=lambda: clock[0]) as t:
        await t.ready(waiting_on(t, 1, InboxKind.APPROVAL), "the first approval")
        await t.press("i")
        clock[0] += 2.0  # two seconds deciding: past the 0.6 s budget
        await t.press("a")
        await t.ready(lambda: len(t.items("w2")) == 1, "the second approval")
        assert t.state().human_seconds >= 0.6
        rows = t.inbox_rows()
        assert rows[0].startswith("1× approve?") and "digest" in rows[0], rows
        assert not any("w2" in s for s in t.toast_texts() if s.startswith("needs you"))


# --- results where you look -----------------------------------------------------------------

LONG = (
    BASE.format(cap=1)
    + """
[[tasks]]
id = "long"
agent = "a"
prompt = "talk"

[[tasks.script]]
say = "{say}"
tool = "finish"
args = {{ answer = "THE-FINAL-ANSWER" }}
"""
)


async def test_a_panel_ends_with_the_newest_line_and_the_answer(tmp_path: Path) -> None:
    words = " ".join(f"word{n}" for n in range(400)) + " NEWEST-WORD"
    async with tui(tmp_path, LONG.format(say=words)) as t:
        await t.ready(lambda: t.view("long").state.ended, "long ended")
        await t.settle()
        panel = next(p for p in t.app.panel_grid.query("ThreadPanel") if p.thread == "long")
        lines = [line for line in drawn(panel).splitlines()[1:-1] if line.strip("│┃ ")]
        assert "THE-FINAL-ANSWER" in lines[-1]
        assert any("NEWEST-WORD" in line for line in lines[-4:])


# --- the palette, keys, kill ----------------------------------------------------------------


async def test_the_palette_opens_on_towers_verbs_then_themes_then_sessions(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.press("colon")
        palette = await t.screen_is(CommandPalette)
        listing = palette.query_one(CommandList)
        await t.until(lambda: listing.option_count > 30, "the discovery list")
        await t.settle()
        prompts = [str(listing.get_option_at_index(i).prompt) for i in range(listing.option_count)]
        assert prompts[0].startswith("Approve:")
        first_theme = next(i for i, p in enumerate(prompts) if p.startswith("Theme:"))
        first_session = next(i for i, p in enumerate(prompts) if p.startswith("Session:"))
        last_verb = max(i for i, p in enumerate(prompts) if ":" in p and p.split(":")[0] in (
            "Approve", "Deny", "Quit", "Policy", "Help", "Sessions"))  # fmt: skip
        assert last_verb < first_theme < first_session
        assert not any(p.startswith(("Keys", "Screenshot", "Maximize")) for p in prompts)


async def test_remapped_keys_keep_their_place_in_the_footer(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE, keymap={"approve": "y", "kill": "X"}) as t:
        await t.settle()
        keys = [(k.key, k.description) for k in t.app.screen.query("FooterKey")]
        assert keys[0] == ("y", "Approve")
        names = [d for _k, d in keys]
        assert names.index("Kill") == names.index("Pause") + 1
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("down")
        await t.settle()
        assert "y approve" in bar(t)


async def test_kill_on_an_ended_thread_says_so_without_asking(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.until(lambda: t.view("idle").state.ended, "idle ended")
        assert t.threads.current == "idle"
        await t.press("x")
        await t.settle()
        assert not isinstance(t.app.screen, ConfirmDialog)
        assert any("idle has already ended (done)" in s for s in t.toast_texts())
        await t.press("down", "x")
        await t.screen_is(ConfirmDialog)
        await t.press("escape")


async def test_focus_is_visible_in_every_theme(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE) as t:
        themes = sorted(n for n in t.app.available_themes if n != "textual-ansi")
        assert len(themes) > 5
        for name in themes:
            t.app.theme = name
            await t.press("t")
            await t.settle()
            focused = t.threads.styles.border_top[1]
            unfocused = t.inbox.styles.border_top[1]
            assert focused != unfocused, name
            assert focused.get_contrast_text() is not None


async def test_the_age_column_is_not_under_the_scrollbar(tmp_path: Path) -> None:
    async with tui(tmp_path, BASE.format(cap=2) + writer("w", "a.txt", repeat=60)) as t:
        await t.until(lambda: len(t.state().threads) == 60, "sixty threads")
        await t.settle()
        assert t.threads.show_vertical_scrollbar
        width = t.threads.scrollable_content_region.width
        header = t.threads.render_line(0).text
        assert header.rstrip().endswith("AGE") and len(header.rstrip()) <= width


async def test_toasts_never_cover_the_inbox_detail(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        t.app.notify("a long toast " * 5, title="test")
        await t.settle()
        toasts = list(t.app.screen.query("Toast"))
        assert toasts
        detail = t.app.inbox_detail.region
        for toast in toasts:
            assert not toast.region.overlaps(detail), (toast.region, detail)


__all__ = ["FILES"]


async def test_next_item_always_moves_on_from_what_is_shown(tmp_path: Path) -> None:
    """] from a thread with nothing waiting lands on the oldest situation; from anything
    shown (thread list or inbox focused) it moves to the next one, never stays put."""
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.until(lambda: t.view("idle").state.ended, "idle ended")
        assert t.threads.current == "idle" and t.app.shown is None
        rows = list(t.inbox.rows)
        await t.press("right_square_bracket")
        await t.settle()
        assert shown_items(t) == {rows[0]}  # the oldest
        await t.press("right_square_bracket")
        await t.settle()
        assert shown_items(t) == {rows[1]}
        # Back on the thread list, a thread whose item is shown: ] goes to the next row.
        await t.press("t")
        owner = t.state().inbox[rows[2]].thread
        t.threads.select_key(owner)
        await t.settle()
        assert shown_items(t) == {rows[2]}
        await t.press("right_square_bracket")
        await t.settle()
        assert shown_items(t) == {rows[0]}  # wrapped, not stuck on rows[2]


async def test_one_key_on_a_group_is_one_decision(tmp_path: Path) -> None:
    async with tui(tmp_path, SAME) as t:
        await t.ready(waiting_on(t, 4, InboxKind.APPROVAL), "four identical approvals")
        await t.press("i", "home", "left")
        await act_and_check(t, "a")
        assert t.state().decisions == 1
        closed = [e.payload for e in await t.events(None) if e.kind is EventKind.INBOX_CLOSED]
        assert len({p["batch"] for p in closed}) == 1 and len(closed) == 4


async def test_a_threads_screen_header_follows_its_state(tmp_path: Path) -> None:
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("down", "down")
        tid = t.threads.current
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        await t.settle()
        head = drawn(screen.query_one("#head"))
        assert "· waiting for approval of write_file ·" in head
        assert "waiting waiting" not in head
        await t.press("a")
        await t.until(lambda: t.view(tid).state is ThreadState.DONE, "done")
        await t.until(lambda: "· done" in drawn(screen.query_one("#head")), "the header: done")


async def test_a_key_right_after_a_cursor_move_acts_on_the_new_row(tmp_path: Path) -> None:
    """The detail pane follows the cursor synchronously: a verb pressed in the same burst
    of keys as the move acts on the row the cursor moved to, which is what is drawn."""
    async with tui(tmp_path, THREE) as t:
        await t.ready(waiting_on(t, 3, InboxKind.APPROVAL), "three approvals")
        await t.press("i", "home")
        await t.settle()
        rows = list(t.inbox.rows)
        await t.press("down", "d")  # no pause between the move and the verb
        await t.until(lambda: rows[1] not in t.state().inbox, "decided")
        assert await closed_items(t) == [rows[1]]
