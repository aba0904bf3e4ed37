"""Sub-agents on screen: the thread list as a tree (collapse, expand, the subtree's spend, a
parent that awaits its children), the verbs on a whole subtree (Z, X, U) next to the
single-thread ones (p, x, e), the budget bar's tree segment, the inbox grouped by tree, and
replay showing the tree grow.

Each lead fans out one `reader` per file; the readers' read_file asks for approval, so the
trees stay alive (children waiting in the inbox, the lead awaiting them) while keys act.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import Input, Label

from tests.tui_harness import Tui, drawn, pilot_until, tui
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.core.state import ThreadView, TowerState, root_of, subtree
from tower.ui.format import usd
from tower.ui.screens.dialogs import ConfirmDialog, TextDialog
from tower.ui.widgets.budget import BudgetBar
from tower.ui.widgets.threads import ThreadList

HEAD = """
[project]
name = "trees"
seed = 1
retry_backoff_s = 0
max_retries = 0

[limits]
max_concurrent = 16

[policy]
allow = ["spawn_agent"]
ask = [{ tool = "read_file", agent = "reader" }]

[[agents]]
name = "lead"
cascade = ["sim/instant"]
tools = ["list_dir", "spawn_agent", "wait_agents", "finish"]

[[agents]]
name = "reader"
cascade = ["sim/instant", "sim/small"]
tools = ["read_file", "finish"]

[[agents]]
name = "solo"
cascade = ["sim/instant", "sim/small"]
tools = ["ask_human", "finish"]
"""

# One reader per file of the workspace, then wait for them all.
LEAD = """
[[tasks]]
id = "lead"
agent = "lead"
workspace = "ws"
repeat = {repeat}
budget_usd = 0.05
prompt = "Review every file of the folder with one reader each, then merge."

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
args = {{ answer = "merged" }}
"""

# A thread outside any tree: it asks, then finishes.
SOLO = """
[[tasks]]
id = "solo"
agent = "solo"
prompt = "Ask once."

[[tasks.script]]
tool = "ask_human"
args = { question = "Which year?" }

[[tasks.script]]
tool = "finish"
args = { answer = "known" }
"""

FILES = {"ws/a.py": "def alpha():\n    return 1\n", "ws/b.md": "# notes\n", "ws/c.txt": "x\n"}


def trees(repeat: int = 1) -> str:
    return HEAD + LEAD.format(repeat=repeat) + SOLO


def settled(t: Tui, leads: list[str], children: int = 3) -> Callable[[], bool]:
    """Every lead has its children, each waiting for approval, and awaits them; the solo
    thread waits on its question."""

    def ready() -> bool:
        threads = t.state().threads
        for lead in leads:
            view = threads.get(lead)
            if view is None or len(view.children) != children:
                return False
            if not view.reason.startswith("waiting on "):
                return False
            if not all(threads[c].pending for c in view.children):
                return False
        solo = threads.get("solo")
        return solo is not None and solo.pending == 1

    return ready


def ids(t: Tui) -> list[str]:
    return list(t.threads.rows)


def hint_line(t: Tui) -> str:
    return drawn(t.app.selection_bar)


async def select(t: Tui, tid: str) -> None:
    """Moves the thread list's cursor to `tid` with the arrow keys, as a person would."""
    tl = t.threads
    tl.focus()
    await t.pilot.pause()
    while tl.current != tid:
        step = "down" if tl.rows.index(tid) > tl.cursor else "up"
        await t.press(step)
    await t.settle()


# --- the tree in the thread list -------------------------------------------------------------


async def test_the_list_is_a_tree_that_collapses_and_expands(tmp_path: Path) -> None:
    """The lead's children are drawn under it, indented with tree glyphs, although the solo
    thread was spawned before them; left hides them (the lead says how many), right shows
    them again; left on a child collapses its parent and selects it."""
    async with tui(tmp_path, trees(), FILES) as t:
        await t.ready(settled(t, ["lead"]), "the lead awaits three readers")
        assert ids(t) == ["lead", "lead.1", "lead.2", "lead.3", "solo"]
        rows = t.rows()
        assert rows[0][2:].startswith("▾ lead ")
        assert [r[2:12] for r in rows[1:4]] == ["├ lead.1  ", "├ lead.2  ", "└ lead.3  "]
        assert rows[4][2:].startswith("solo ")  # a thread outside trees: as always
        lead = t.view("lead")
        assert "awaits 3" in rows[0] and "running" not in rows[0]
        assert f"Σ{'$'}{lead.subtree_usd:.4f}" in rows[0]
        assert lead.subtree_usd > lead.cost_usd  # the Σ is the tree's, not the lead's own
        assert "read b.md" in rows[2] and "waiting" in rows[2]

        assert t.threads.current == "lead"
        await t.press("left")
        assert ids(t) == ["lead", "solo"]
        await t.settle()
        assert t.rows()[0][2:].startswith("▸ lead ") and "[+3] Review every file" in t.rows()[0]
        assert t.app.threads_list.border_title.startswith("Threads 2/5")

        await t.press("right")
        assert ids(t) == ["lead", "lead.1", "lead.2", "lead.3", "solo"]
        await t.settle()
        assert t.rows()[0][2:].startswith("▾ lead ") and "[+" not in t.rows()[0]

        await t.press("down", "down")
        assert t.threads.current == "lead.2"
        await t.press("left")  # on a child: its parent collapses and is selected
        assert t.threads.current == "lead" and ids(t) == ["lead", "solo"]
        await t.press("plus")
        assert ids(t) == ["lead", "lead.1", "lead.2", "lead.3", "solo"]
        await t.press("minus")
        assert ids(t) == ["lead", "solo"]

        # ] to a hidden child's item: the list opens the tree, that child is selected.
        for _ in range(4):
            await t.press("right_square_bracket")
            shown = t.app.shown
            assert shown is not None and shown.thread is not None
            assert t.threads.current == shown.thread
            if shown.thread.startswith("lead."):
                break
        assert shown.thread.startswith("lead.") and "lead" not in t.threads.collapsed
        assert ids(t) == ["lead", "lead.1", "lead.2", "lead.3", "solo"]


async def test_a_filter_lists_matches_flat(tmp_path: Path) -> None:
    """With a filter, the matches are a flat list without glyphs or fold markers, as before
    (a parent still shows its subtree's spend and what it awaits)."""
    async with tui(tmp_path, trees(), FILES) as t:
        await t.ready(settled(t, ["lead"]), "the lead awaits three readers")
        await t.press("slash", *"reader")  # the readers, and the lead's title says it
        await t.until(lambda: ids(t) == ["lead", "lead.1", "lead.2", "lead.3"], "matches")
        await t.settle()
        assert [r[2:9] for r in t.rows()] == ["lead   ", "lead.1 ", "lead.2 ", "lead.3 "]
        assert "awaits 3" in t.rows()[0] and "Σ$" in t.rows()[0]
        await t.press("escape")
        await t.until(lambda: ids(t) == ["lead", "lead.1", "lead.2", "lead.3", "solo"], "tree")


# --- verbs on a subtree ----------------------------------------------------------------------


async def test_Z_pauses_the_selected_tree_then_resumes_it_and_p_pauses_one(tmp_path: Path) -> None:
    async with tui(tmp_path, trees(repeat=2), FILES) as t:
        await t.ready(settled(t, ["lead-1", "lead-2"]), "two leads await their readers")
        assert t.threads.current == "lead-1"
        assert "Z pause tree · X kill tree · U escalate tree" in hint_line(t)
        mine = subtree(t.state(), "lead-1")
        others = [*subtree(t.state(), "lead-2"), "solo"]
        assert len(mine) == 4

        await t.press("Z")
        await t.until(lambda: all(t.view(x).pause_requested for x in mine), "the tree pausing")
        assert not any(t.view(x).pause_requested for x in others)
        assert t.toast("pausing 4 thread(s) of lead-1's tree")

        await t.press("Z")  # each already asked to pause: Z resumes them
        await t.until(lambda: not any(t.view(x).pause_requested for x in mine), "resumed")
        assert t.toast("resumed 4 thread(s) of lead-1's tree")

        await select(t, "lead-1.2")
        assert "pause tree" not in hint_line(t)  # a child without children of its own
        await t.press("p")
        await t.until(lambda: t.view("lead-1.2").pause_requested, "lead-1.2 pausing")
        paused = [x for x in mine + others if t.view(x).pause_requested]
        assert paused == ["lead-1.2"]


async def test_X_asks_naming_the_count_then_kills_the_whole_tree(tmp_path: Path) -> None:
    async with tui(tmp_path, trees(repeat=2), FILES) as t:
        await t.ready(settled(t, ["lead-1", "lead-2"]), "two leads await their readers")
        await select(t, "lead-2")
        await t.press("X")
        dialog = await t.screen_is(ConfirmDialog)
        assert "Kill lead-2 and its 3 sub-agents?" in drawn(dialog.query_one(Label))
        await t.press("y")
        mine = subtree(t.state(), "lead-2")
        await t.until(
            lambda: all(t.view(x).state is ThreadState.KILLED for x in mine), "the tree killed"
        )
        assert t.toast("killed 4 thread(s) of lead-2's tree")
        assert not any(t.view(x).state.ended for x in subtree(t.state(), "lead-1"))
        assert t.view("solo").state is ThreadState.WAITING
        assert t.items("lead-2.1") == [] and len(t.items("lead-1.1")) == 1
        await t.settle()
        assert all("killed" in t.row(x) for x in mine)
        assert "waiting" in t.row("lead-1.1")


async def test_U_escalates_each_thread_of_the_tree_that_has_a_stronger_model(
    tmp_path: Path,
) -> None:
    """The readers have a second model, the lead has none: U moves the readers of the
    selected tree only; the lead stays, the other tree and the solo thread too."""
    async with tui(tmp_path, trees(repeat=2), FILES) as t:
        await t.ready(settled(t, ["lead-1", "lead-2"]), "two leads await their readers")
        assert t.threads.current == "lead-1"
        await t.press("U")
        readers = t.view("lead-1").children
        await t.until(
            lambda: all(t.view(c).model == "sim/small" for c in readers), "readers escalated"
        )
        assert t.toast("escalated 3 thread(s) of lead-1's tree")
        assert t.view("lead-1").model == "sim/instant"
        for other in [*subtree(t.state(), "lead-2"), "solo"]:
            assert t.view(other).model == "sim/instant"
        await t.settle()
        assert all(" small " in t.row(c) for c in readers)
        assert " instant " in t.row("lead-2.1")


# --- the budget bar --------------------------------------------------------------------------


async def test_the_budget_bar_shows_the_selected_tree(tmp_path: Path) -> None:
    async with tui(tmp_path, trees(), FILES) as t:
        await t.ready(settled(t, ["lead"]), "the lead awaits three readers")
        bar = t.app.query_one(BudgetBar)
        await select(t, "lead.2")
        spent = f"${t.view('lead').subtree_usd:.4f}"
        assert f"tree lead {spent} of $0.0500 · 4 threads" in drawn(bar)
        await select(t, "solo")
        assert "tree " not in drawn(bar)
        await select(t, "lead")
        assert f"tree lead {spent} of $0.0500 · 4 threads" in drawn(bar)


# --- the inbox, grouped by tree -------------------------------------------------------------

# alpha starts two readers, waits for the first only, then starts a third: its third item
# opens after beta's, while its second is still open.
ALPHA = """
[[tasks]]
id = "alpha"
agent = "lead"
workspace = "ws"
prompt = "Read in two rounds."

[[tasks.script]]
tool = "spawn_agent"
args = { agent = "reader", prompt = "Read a.py and report.", title = "read a.py" }

[[tasks.script]]
tool = "spawn_agent"
args = { agent = "reader", prompt = "Read b.md and report.", title = "read b.md" }

[[tasks.script]]
tool = "wait_agents"
args = { ids = ["alpha.1"] }

[[tasks.script]]
tool = "spawn_agent"
args = { agent = "reader", prompt = "Read c.txt and report.", title = "read c.txt" }

[[tasks.script]]
tool = "wait_agents"

[[tasks.script]]
tool = "finish"
args = { answer = "done" }
"""

# beta waits for the gate (a question the person answers), then starts one reader.
BETA = """
[[tasks]]
id = "gate"
agent = "solo"
prompt = "Ask once."

[[tasks.script]]
tool = "ask_human"
args = { question = "Go?" }

[[tasks.script]]
tool = "finish"
args = { answer = "go" }

[[tasks]]
id = "beta"
agent = "lead"
workspace = "ws"
after = ["gate"]
prompt = "Read one file."

[[tasks.script]]
tool = "spawn_agent"
args = { agent = "reader", prompt = "Read d.txt and report.", title = "read d.txt" }

[[tasks.script]]
tool = "wait_agents"

[[tasks.script]]
tool = "finish"
args = { answer = "done" }
"""

ROUNDS = {**FILES, "ws/d.txt": "d\n"}


def item_of(t: Tui, tid: str) -> str:
    (item,) = [i.id for i in t.items(tid)]
    return item


async def test_the_inbox_keeps_each_trees_items_together(tmp_path: Path) -> None:
    """Items opened alpha, alpha, beta, alpha in time are listed alpha, alpha, alpha, beta
    (a tree is placed by its oldest item); ] walks them in that order and the thread list
    follows."""
    async with tui(tmp_path, HEAD + ALPHA + BETA, ROUNDS) as t:
        await t.ready(
            lambda: {i.thread for i in t.items()} == {"alpha.1", "alpha.2", "gate"},
            "alpha's two readers and the gate wait",
        )
        await t.press("right_square_bracket")
        while t.app.shown is None or t.app.shown.thread != "gate":
            await t.press("right_square_bracket")
        await t.press("r")
        dialog = await t.screen_is(TextDialog)
        dialog.query_one(Input).value = "go"
        await t.press("enter")
        await t.until(lambda: len(t.items("beta.1")) == 1, "beta's reader waits")
        sup, core = t.app.control, t.app.core
        assert sup is not None and core is not None
        first = item_of(t, "alpha.1")
        await core.call(lambda: sup.approve(first))  # a decision made elsewhere (a rule)
        await t.until(lambda: len(t.items("alpha.3")) == 1, "alpha's third reader waits")
        await t.settle()

        by_time = [i.thread for i in sorted(t.items(), key=lambda i: i.created)]
        assert by_time == ["alpha.2", "beta.1", "alpha.3"]  # interleaved in time
        shown = [row.split()[1] for row in t.inbox_rows()]
        assert shown == ["alpha.2", "alpha.3", "beta.1"]

        # ] moves on from what is shown, through the rows in the order they are drawn.
        start = t.app.shown.thread if t.app.shown is not None else None
        at = shown.index(start) if start in shown else -1
        seen = []
        for _ in range(3):
            await t.press("right_square_bracket")
            assert t.app.shown is not None
            seen.append(t.app.shown.thread)
            assert t.threads.current == t.app.shown.thread  # the thread list follows
        assert seen == [shown[(at + k) % 3] for k in (1, 2, 3)]
        await t.press("a")  # what ] showed is what a approves
        await t.until(lambda: t.items(seen[-1]) == [], f"{seen[-1]} approved")
        assert all(len(t.items(x)) == 1 for x in shown if x != seen[-1])


async def test_a_collapsed_tree_stays_collapsed_as_children_arrive(tmp_path: Path) -> None:
    async with tui(tmp_path, HEAD + ALPHA, ROUNDS) as t:
        await t.ready(
            lambda: {i.thread for i in t.items()} == {"alpha.1", "alpha.2"}, "two readers wait"
        )
        assert t.threads.current == "alpha"
        await t.press("left")
        await t.settle()
        assert ids(t) == ["alpha"] and "[+2] " in t.rows()[0]
        control, core = t.app.control, t.app.core
        assert control is not None and core is not None
        first = item_of(t, "alpha.1")
        await core.call(lambda: control.approve(first))
        await t.until(lambda: "alpha.3" in t.state().threads, "a third reader")
        await t.until(lambda: "[+3] " in t.rows()[0], "the hidden count grows")
        assert ids(t) == ["alpha"] and t.rows()[0][2:].startswith("▸ alpha ")
        await t.press("right")
        assert ids(t) == ["alpha", "alpha.1", "alpha.2", "alpha.3"]


# --- replay ---------------------------------------------------------------------------------


async def test_replay_shows_the_tree_growing(tmp_path: Path) -> None:
    """Early in the log the lead has one child under it; at the end, three. Left and right
    still step through events there (they do not fold the tree)."""
    from tests.helpers import write_project
    from tower.core.project import load_project
    from tower.core.session import run_headless
    from tower.core.store import Store
    from tower.ui.replay_app import ReplayApp

    root = write_project(tmp_path / "proj", HEAD + LEAD.format(repeat=1), FILES)
    db = tmp_path / "t.db"
    result = await run_headless(load_project(root), db, "all")
    session = result.summary["session"]
    store = await Store.open(db)
    events = [ev async for ev in store.events(session)]
    await store.close()
    spawned = [e.seq for e in events if e.kind is EventKind.THREAD_SPAWNED]
    one_child = spawned[2] - 1  # lead.1 is in, lead.2 not yet

    app = ReplayApp(db, session)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot_until(pilot, lambda: app.rp is not None)
        rp = app.rp
        assert rp is not None
        tl = app.query_one(ThreadList)

        def drawn_rows() -> list[str]:
            return [tl.render_line(y).text for y in range(1, len(tl.rows) + 1)]

        async def go(seq: int) -> None:
            await pilot.press("g")
            await pilot.press(*f"#{seq}", "enter")
            await pilot_until(pilot, lambda: rp.pos == seq, f"event {seq}")
            await pilot.pause()

        await go(one_child)
        assert tl.rows == ["lead", "lead.1"]
        assert drawn_rows()[1][2:].startswith("└ lead.1 ")
        await go(rp.last)
        assert tl.rows == ["lead", "lead.1", "lead.2", "lead.3"]
        rows = drawn_rows()
        assert rows[0][2:].startswith("▾ lead ") and rows[3][2:].startswith("└ lead.3 ")
        assert f"Σ${result.state.threads['lead'].subtree_usd:.4f}" in rows[0]
        await go(one_child)
        await pilot.press("right")  # steps one event; the tree is not folded
        assert rp.pos == one_child + 1 and not tl.collapsed
        await pilot.press("q")


# --- the list's cost ------------------------------------------------------------------------


def _view(tid: str, parent: str | None = None) -> ThreadView:
    return ThreadView(tid, "a", "t", tid, ["sim/instant"], "sim/instant", 0, 0.0, parent=parent)


def test_rebuild_walks_ten_thousand_threads_in_trees_once() -> None:
    """10,000 threads, 99 trees of 100 (a lead, 9 children with 10 each) and 100 others: the
    tree order is each root then its subtree, and collapsed, the hidden counts are right
    (how long it takes is bench/ui_load.py's business, not a test's)."""
    state = TowerState()
    for r in range(99):
        lead = f"r{r}"
        state.threads[lead] = _view(lead)
        for c in range(9):
            child = f"{lead}.{c + 1}"
            state.threads[child] = _view(child, lead)
            state.threads[lead].children.append(child)
            for g in range(10):
                grand = f"{child}.{g + 1}"
                state.threads[grand] = _view(grand, child)
                state.threads[child].children.append(grand)
        state.threads[f"x{r}"] = _view(f"x{r}")  # a thread outside trees, between them
    state.threads["x99"] = _view("x99")
    state.recount()  # built by hand, not by the reducer
    assert len(state.threads) == 10_000
    tl = ThreadList(lambda: state, lambda: 0.0)
    tl.rebuild()
    expected = []
    for r in range(99):
        expected += [*subtree(state, f"r{r}"), f"x{r}"]
    expected.append("x99")
    assert tl.rows == expected
    assert tl.glyphs["r0.9.10"] == "  └ " and tl.glyphs["r0.1.1"] == "│ ├ "
    assert root_of(state, "r5.3.7") == "r5"
    tl.collapsed = {f"r{r}" for r in range(99)}
    tl.rebuild()
    assert len(tl.rows) == 199 and tl.hidden["r7"] == 99


# --- a subtree's budget stop ----------------------------------------------------------------


async def test_children_stopped_by_the_leads_cap_are_one_row_and_one_raise(
    tmp_path: Path,
) -> None:
    """The lead's cap bounds its readers: all three are stopped by it. The inbox shows one
    row naming the lead's subtree budget; a raises the lead's cap by the amount shown,
    once, and the three go on."""
    toml = (HEAD + LEAD.format(repeat=1)).replace("budget_usd = 0.05", "budget_usd = 0.0006")
    toml = toml.replace('ask = [{ tool = "read_file", agent = "reader" }]\n', "")
    async with tui(tmp_path, toml, FILES) as t:

        def stopped() -> list[str]:
            return [
                i.thread
                for i in t.items()
                if i.kind is InboxKind.BUDGET and i.data.get("scope") == "subtree"
            ]

        await t.ready(lambda: len(stopped()) == 3, "three readers stopped by the lead's cap")
        need = max(float(i.data["suggest_usd"]) for i in t.items())
        (row,) = t.inbox_rows()
        assert "3× budget" in row and "3 threads" in row and "lead's subtree budget" in row
        await t.press("i", "home", "left")  # the inbox, on its one row, closed: the group
        shown = t.app.shown
        assert shown is not None and len(shown.items) == 3
        amount = shown.situation.suggest_usd if shown.situation is not None else None
        assert amount is not None and amount >= need
        await t.settle()
        detail = " ".join(drawn(t.app.inbox_detail).split())
        assert "3 sub-agent(s) stopped by lead's subtree budget" in detail
        assert "one raise wakes them all" in detail
        assert f"raise the budget by {usd(amount, 2)}" in hint_line(t)
        cap = t.view("lead").budget_usd or 0.0
        opened = set(shown.items)
        await t.press("a")
        await t.until(lambda: not opened & {i.id for i in t.items()}, "the three woken")
        assert t.view("lead").budget_usd == pytest.approx(cap + amount)
        assert t.toast("raised the budget by")


async def test_a_threads_screen_names_its_parent_and_its_subtrees_spend(tmp_path: Path) -> None:
    """enter on the lead: the header gives the subtree's spend and size beside its own;
    on a reader, whose sub-agent it is; its transcript opens with the same."""
    from textual.widgets import Static

    from tower.ui.screens.detail import ThreadScreen

    async with tui(tmp_path, trees(), FILES) as t:
        await t.ready(settled(t, ["lead"]), "the lead awaits three readers")
        await select(t, "lead")
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        lead = t.view("lead")
        head = drawn(screen.query_one("#head", Static))
        assert f"{usd(lead.cost_usd)} · subtree {usd(lead.subtree_usd)} (4 threads)" in head
        await t.press("escape")
        await select(t, "lead.2")
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        assert "lead.2 · reader · " in drawn(screen.query_one("#head", Static))
        assert "· sub-agent of lead" in drawn(screen.query_one("#head", Static))
