"""Results where you look: a write_file approval shows its diff, `w` lists what a thread
wrote with diffs against the original workspace, `E` edits arguments field by field (file
content as text, or in $EDITOR), `D` denies with a reason the agent reads, and the transcript
shows a long tool result whole, in place.

Boots TowerApp through tests/tui_harness.py; waits on conditions, never on sleeps.
"""

from __future__ import annotations

import contextlib
import copy
import stat
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, Label, RichLog, Static, TextArea

from tests.tui_harness import Tui, drawn, project, tui, waiting_on
from tower.core import llm
from tower.core.events import EventKind, InboxKind, ThreadState
from tower.ui.screens.detail import ThreadScreen
from tower.ui.screens.dialogs import ArgsDialog, TextDialog
from tower.ui.screens.files import FilesScreen
from tower.ui.widgets.inbox import InboxDetail

# Rewrites readme.txt of the task's workspace (needs approval), then finishes.
EDIT = """
[[tasks]]
id = "w"
agent = "a"
prompt = "extend the readme"
workspace = "ws"

[[tasks.script]]
say = "Adding a line."
tool = "write_file"
args = { path = "readme.txt", content = "hello\\nworld\\n" }

[[tasks.script]]
tool = "finish"
args = { answer = "done" }
"""

FILES = {"ws/readme.txt": "hello\n", "ws/other.txt": "untouched\n"}


async def approval(t: Tui) -> str:
    await t.ready(waiting_on(t, 1, InboxKind.APPROVAL), "an approval")
    (item,) = t.items()
    return item.id


def transcript(screen: ThreadScreen) -> str:
    """The transcript as drawn, its wrapped lines joined into one line of words."""
    return " ".join(" ".join(strip.text for strip in screen.query_one(RichLog).lines).split())


# --- the approval shows the diff ------------------------------------------------------------


async def test_a_write_file_approval_shows_the_diff_not_escaped_json(tmp_path: Path) -> None:
    async with tui(tmp_path, project(EDIT), FILES) as t:
        await approval(t)
        await t.settle()
        shown = drawn(t.app.query_one(InboxDetail))
        assert "@@ -1 +1,2 @@" in shown and " hello" in shown and "+world" in shown
        assert "path        readme.txt" in shown  # the other arguments are still listed
        assert "content" not in shown and "\\n" not in shown  # no escaped JSON
        item = t.items()[0]
        assert item.data["diff"].startswith("--- a/readme.txt\n+++ b/readme.txt\n")


async def test_a_long_diff_is_cut_to_the_pane_and_names_the_files_view(tmp_path: Path) -> None:
    body = "".join(f"line {i}\\n" for i in range(60))
    long_edit = EDIT.replace('content = "hello\\nworld\\n"', f'content = "{body}"')
    async with tui(tmp_path, project(long_edit), FILES) as t:
        await approval(t)
        await t.settle()
        shown = drawn(t.app.query_one(InboxDetail))
        assert "+line 0" in shown and "+line 59" not in shown
        assert "more lines · w: files view" in shown
        assert "a approve" in shown  # the keys stay in sight
        assert len(t.items()[0].data["diff"].splitlines()) == 64  # the item has it all


# --- the files view -------------------------------------------------------------------------


async def files_screen(t: Tui) -> FilesScreen:
    screen = await t.screen_is(FilesScreen)
    await t.until(lambda: screen.loaded.is_set(), "the files view reads the workspace")
    await t.settle()
    return screen


async def test_w_lists_the_written_file_with_its_diff_and_the_workspace_path(
    tmp_path: Path,
) -> None:
    async with tui(tmp_path, project(EDIT), FILES) as t:
        item = await approval(t)
        await t.press("w")  # before approval: nothing written yet, one write awaiting it
        screen = await files_screen(t)
        assert screen.thread == "w" and screen.changes == []
        assert [p[:2] for p in screen.pending] == [(item, "readme.txt")]
        rows = drawn(screen.query_one(DataTable))
        assert f"awaiting {item}" in rows and "readme.txt" in rows
        proposed = drawn(screen.query_one("#diff", Static))
        assert "+world" in proposed  # the whole proposed diff, before deciding
        sup = t.app.sup
        assert sup is not None
        await t.app._command(lambda: sup.approve(item))
        await t.until(lambda: t.view("w").state is ThreadState.DONE, "w done")
        await t.press("ctrl+r")  # reload: the log and the workspace again
        await t.until(lambda: screen.loaded.is_set() and screen.changes, "the reloaded list")
        assert [(c.path, c.written) for c in screen.changes] == [("readme.txt", True)]
        assert screen.pending == []  # decided: no longer awaiting
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))

        await t.press("w")
        screen = await files_screen(t)
        root = t.workspace("w")
        assert root == t.app.store.path.parent / "workspaces" / t.app.sup.session_id / "w"  # type: ignore[union-attr]
        head = drawn(screen.query_one("#head", Static))
        assert f"workspace  {root}" in head
        assert f"original   {t.app.project.root / 'ws'}" in head
        table = screen.query_one(DataTable)
        assert table.row_count == 1
        status, name = (str(c) for c in table.get_row_at(0))
        assert (status, name) == ("modified ✎", "readme.txt")  # other.txt is unchanged
        diff = drawn(screen.query_one("#diff", Static))
        assert "--- a/readme.txt" in diff and "+world" in diff and " hello" in diff
        await t.press("escape")
        await t.screen_is(type(t.app.get_default_screen()))

        # The same key from the thread's detail screen.
        await t.press("enter")
        await t.screen_is(ThreadScreen)
        await t.press("w")
        screen = await files_screen(t)
        assert screen.thread == "w" and [c.path for c in screen.changes] == ["readme.txt"]
        assert "+world" in screen.diffs["readme.txt"]


# --- E: field by field, content as text -----------------------------------------------------


async def test_e_edits_the_content_as_text_and_the_file_gets_it(tmp_path: Path) -> None:
    async with tui(tmp_path, project(EDIT), FILES) as t:
        await approval(t)
        await t.press("E")
        dialog = await t.screen_is(ArgsDialog)
        path = dialog.field("path")
        content = dialog.field("content")
        assert isinstance(path, Input) and path.value == "readme.txt"
        assert isinstance(content, TextArea) and content.text == "hello\nworld\n"  # not JSON
        content.focus()
        content.move_cursor(content.document.end)
        await t.press(*"again", "enter")
        assert content.text == "hello\nworld\nagain\n"
        await t.press("ctrl+s")
        await t.until(lambda: t.view("w").state is ThreadState.DONE, "w done")
        assert (t.workspace("w") / "readme.txt").read_text() == "hello\nworld\nagain\n"
        closed = [e for e in await t.events("w") if e.kind is EventKind.INBOX_CLOSED]
        assert closed[0].payload["args"] == {
            "path": "readme.txt",
            "content": "hello\nworld\nagain\n",
        }


async def test_e_then_ctrl_e_edits_the_content_in_the_editor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "from the editor\\n" >> "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", str(editor))
    async with tui(tmp_path, project(EDIT), FILES) as t:
        # The test driver cannot hand the terminal over; the editor needs no terminal here.
        monkeypatch.setattr(t.app, "suspend", contextlib.nullcontext)
        await approval(t)
        await t.press("E")
        dialog = await t.screen_is(ArgsDialog)
        await t.press("ctrl+e")  # the editor opens on the content
        await t.until(
            lambda: dialog.field("content").text == "hello\nworld\nfrom the editor\n",  # type: ignore[union-attr]
            "the edited content back in the dialog",
        )
        assert t.app.screen is dialog  # the human still approves it
        await t.press("ctrl+s")
        await t.until(lambda: t.view("w").state is ThreadState.DONE, "w done")
        text = (t.workspace("w") / "readme.txt").read_text()
        assert text == "hello\nworld\nfrom the editor\n"


async def test_args_dialog_keeps_types_and_refuses_bad_json_fields() -> None:
    app: App[None] = App()
    results: list[Any] = []
    args = {"path": "a.txt", "count": 3, "force": False, "opts": {"mode": "fast"}, "note": None}
    async with app.run_test(size=(120, 50)) as pilot:
        dialog = ArgsDialog("tool", args)
        app.push_screen(dialog, results.append)
        await pilot.pause()
        kinds = {name: type(dialog.field(name)).__name__ for name in args}
        assert kinds == {
            "path": "Input",
            "count": "Input",
            "force": "Input",
            "opts": "TextArea",
            "note": "Input",
        }
        count = dialog.field("count")
        assert isinstance(count, Input) and count.value == "3"
        count.value = "three"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert "count: not valid JSON" in str(dialog.query_one("#error", Label).content)
        assert app.screen is dialog and results == []
        count.value = "4"
        opts = dialog.field("opts")
        assert isinstance(opts, TextArea)
        opts.text = '{"mode": "slow"}'
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert results == [
            {"path": "a.txt", "count": 4, "force": False, "opts": {"mode": "slow"}, "note": None}
        ]


async def test_ctrl_e_on_a_tool_without_text_edits_every_argument_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf \'{"count": 7, "extra": "yes"}\' > "$1"\n')
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("VISUAL", str(editor))
    app: App[None] = App()
    results: list[Any] = []
    async with app.run_test(size=(120, 50)) as pilot:
        monkeypatch.setattr(app, "suspend", contextlib.nullcontext)
        dialog = ArgsDialog("tool", {"count": 3})
        app.push_screen(dialog, results.append)
        await pilot.pause()
        await pilot.press("ctrl+e")
        await pilot.pause()
        assert set(dialog.args) == {"count", "extra"}
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert results == [{"count": 7, "extra": "yes"}]


# --- D: deny with a reason the agent reads ---------------------------------------------------


async def test_capital_d_denies_with_a_reason_that_reaches_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[dict[str, Any]]] = []
    real = llm.stream_call

    async def spy(model: str, messages: list[dict[str, Any]], *a: Any, **k: Any) -> Any:
        calls.append(copy.deepcopy(messages))
        return await real(model, messages, *a, **k)

    monkeypatch.setattr(llm, "stream_call", spy)
    reason = "keep the readme short"
    async with tui(tmp_path, project(EDIT), FILES) as t:
        item = await approval(t)
        assert len(calls) == 1
        await t.press("D")
        dialog = await t.screen_is(TextDialog)
        assert f"Deny {item}" in drawn(dialog.query_one(Label))
        await t.press(*reason, "enter")
        await t.until(lambda: t.view("w").state.ended, "w ended")
        assert (t.workspace("w") / "readme.txt").read_text() == "hello\n"  # not written
        events = await t.events("w")
        (closed,) = [e for e in events if e.kind is EventKind.INBOX_CLOSED]
        assert closed.payload["resolution"] == "denied" and closed.payload["text"] == reason
        (result,) = [e for e in events if e.kind is EventKind.TOOL_RESULT and not e.payload["ok"]]
        assert result.payload["result"] == f"denied by the human: {reason}"
        # The next model call was sent the reason, as the write's tool result.
        assert len(calls) == 2
        tool_msgs = [m for m in calls[1] if m.get("role") == "tool"]
        assert tool_msgs[-1]["content"] == f"denied by the human: {reason}"


async def test_d_stays_one_key(tmp_path: Path) -> None:
    async with tui(tmp_path, project(EDIT), FILES) as t:
        await approval(t)
        await t.press("d")
        await t.until(lambda: t.view("w").state.ended, "w ended")
        assert not isinstance(t.app.screen, TextDialog)
        results = [e for e in await t.events("w") if e.kind is EventKind.TOOL_RESULT]
        assert results[0].payload["result"] == "denied by the human"


# --- the transcript shows a long result whole, in place -------------------------------------

LONG = """
[[tasks]]
id = "r"
agent = "a"
prompt = "read the long file"
workspace = "ws"

[[tasks.script]]
tool = "read_file"
args = { path = "long.txt" }

[[tasks.script]]
tool = "ask_human"
args = { question = "Anything else?" }
"""


async def test_enter_in_the_transcript_shows_a_long_tool_result_whole(tmp_path: Path) -> None:
    text = " ".join(f"w{i:04d}" for i in range(300)) + " ENDMARK"
    async with tui(tmp_path, project(LONG), {"ws/long.txt": text}) as t:
        await t.ready(waiting_on(t, 1, InboxKind.QUESTION), "the question")
        await t.press("enter")
        screen = await t.screen_is(ThreadScreen)
        await t.until(lambda: "enter shows all" in transcript(screen), "the cut result")
        assert "w0050" in transcript(screen) and "ENDMARK" not in transcript(screen)
        assert f"({len(text)} chars · enter shows all)" in transcript(screen)
        before = transcript(screen).split("← read_file")[0]
        await t.press("enter")
        await t.until(lambda: "ENDMARK" in transcript(screen), "the whole result")
        whole = transcript(screen)
        assert "enter folds it" in whole and "enter shows all" not in whole
        assert whole.split("← read_file")[0] == before  # in place: what came before stays
        assert whole.index("ENDMARK") < whole.index("⚑ inbox")  # ...and what came after
        await t.press("enter")
        await t.until(lambda: "ENDMARK" not in transcript(screen), "cut again")
        assert "enter shows all" in transcript(screen)
