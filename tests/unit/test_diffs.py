"""Diffs of what a thread writes: the approval's diff (new file, changed file, cap, links that
lead outside), the INBOX_OPENED payload that carries it, and the files view's comparison."""

from __future__ import annotations

import os
from pathlib import Path

from tower.core.diffs import (
    MAX_DIFF_BYTES,
    MAX_DIFF_LINES,
    approval_diff,
    compare,
    file_diff,
    tree_files,
    unified,
    written_paths,
)
from tower.core.events import Event, EventKind, InboxKind
from tower.core.tools import Workspace


def ws_with(tmp_path: Path, files: dict[str, str]) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return Workspace(root)


def test_a_new_file_is_all_added_lines(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {})
    out = approval_diff(ws, {"path": "notes/new.md", "content": "# Title\nbody\n"})
    assert out == {
        "diff": "--- /dev/null\n+++ b/notes/new.md\n@@ -0,0 +1,2 @@\n+# Title\n+body",
    }


def test_a_changed_file_shows_removed_and_added_lines(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {"a.py": "x = 1\ny = 2\nz = 3\n"})
    diff = approval_diff(ws, {"path": "a.py", "content": "x = 1\ny = 20\nz = 3\n"})["diff"]
    lines = diff.splitlines()
    assert lines[:3] == ["--- a/a.py", "+++ b/a.py", "@@ -1,3 +1,3 @@"]
    assert "-y = 2" in lines and "+y = 20" in lines and " x = 1" in lines


def test_an_absolute_path_inside_is_named_relative(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {"a.txt": "old\n"})
    diff = approval_diff(ws, {"path": str(ws.root / "a.txt"), "content": "new\n"})["diff"]
    assert diff.startswith("--- a/a.txt\n+++ b/a.txt\n")


def test_the_same_content_says_so(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {"a.txt": "same\n"})
    out = approval_diff(ws, {"path": "a.txt", "content": "same\n"})
    assert out["diff"] == "" and "already has exactly this content" in out["diff_note"]


def test_a_missing_final_newline_is_marked(tmp_path: Path) -> None:
    diff = unified("f", "a\n", "a\nb")
    assert diff.endswith("+b\n\\ No newline at end of file")


def test_the_diff_is_capped_in_lines_and_bytes(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {})
    content = "".join(f"line {i}\n" for i in range(2000))
    diff = approval_diff(ws, {"path": "big.txt", "content": content})["diff"]
    lines = diff.splitlines()
    assert len(lines) == MAX_DIFF_LINES + 1
    assert lines[-1] == f"… {2000 + 3 - MAX_DIFF_LINES} more lines"
    wide = "".join(f"{i:04d} " + "x" * 300 + "\n" for i in range(200))
    diff = approval_diff(ws, {"path": "wide.txt", "content": wide})["diff"]
    assert len(diff.encode()) <= MAX_DIFF_BYTES + 40
    assert diff.splitlines()[-1].endswith("more lines")
    assert len(diff.splitlines()) < 200


def test_a_link_pointing_outside_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    ws = ws_with(tmp_path, {"ok.txt": "fine\n"})
    os.symlink(outside / "secret.txt", ws.root / "link.txt")
    os.symlink(outside, ws.root / "dir")
    os.symlink("../outside/secret.txt", ws.root / "rel.txt")
    for path in ("link.txt", "dir/secret.txt", "rel.txt"):
        out = approval_diff(ws, {"path": path, "content": "new\n"})
        assert "diff" not in out, path
        assert "outside the workspace" in out["diff_note"], out
        assert "SECRET" not in str(out)
    # The files view neither lists nor reads through them.
    assert tree_files(ws.root) == ["ok.txt"]
    text = file_diff(ws.root, None, "link.txt")
    assert "SECRET" not in text and "outside the workspace" in text


def test_a_link_inside_is_followed(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {"real.txt": "one\n"})
    os.symlink("real.txt", ws.root / "alias.txt")
    diff = approval_diff(ws, {"path": "alias.txt", "content": "two\n"})["diff"]
    assert "-one" in diff and "+two" in diff


def test_binary_and_unusable_arguments(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {})
    (ws.root / "blob.bin").write_bytes(b"\x00\x01\x02")
    out = approval_diff(ws, {"path": "blob.bin", "content": "text"})
    assert "binary" in out["diff_note"] and "diff" not in out
    assert approval_diff(ws, {"path": "x.txt"}) == {}
    assert approval_diff(ws, {"path": 3, "content": "x"}) == {}
    assert "is a folder" in approval_diff(ws, {"path": ".", "content": "x"})["diff_note"]


# --- the files view -------------------------------------------------------------------------


def _ev(seq: int, kind_: EventKind, /, **payload: object) -> Event:
    return Event(seq, float(seq), kind_, "t", payload)


def test_written_paths_follow_the_log_with_edits_and_refusals() -> None:
    events = [
        _ev(1, EventKind.TOOL_CALLED, call_id="c1", tool="write_file", args={"path": "a.txt"}),
        _ev(2, EventKind.TOOL_RESULT, call_id="c1", tool="write_file", ok=True, result="ok"),
        _ev(3, EventKind.TOOL_CALLED, call_id="c2", tool="write_file", args={"path": "b.txt"}),
        _ev(4, EventKind.INBOX_OPENED, item="i1", kind="approval", call_id="c2"),
        _ev(5, EventKind.INBOX_CLOSED, item="i1", resolution="approved", args={"path": "./c.txt"}),
        _ev(6, EventKind.TOOL_RESULT, call_id="c2", tool="write_file", ok=True, result="ok"),
        _ev(7, EventKind.TOOL_CALLED, call_id="c3", tool="write_file", args={"path": "d.txt"}),
        _ev(8, EventKind.TOOL_RESULT, call_id="c3", tool="write_file", ok=False, result="denied"),
        _ev(9, EventKind.TOOL_CALLED, call_id="c4", tool="write_file", args={"path": "a.txt"}),
        _ev(10, EventKind.TOOL_RESULT, call_id="c4", tool="write_file", ok=True, result="ok"),
    ]
    assert written_paths(events) == ["a.txt", "c.txt"]


def test_compare_lists_added_modified_deleted_and_written_unchanged(tmp_path: Path) -> None:
    original = tmp_path / "orig"
    copy = tmp_path / "copy"
    for root in (original, copy):
        (root / "sub").mkdir(parents=True)
        (root / "same.txt").write_text("same\n")
        (root / "sub" / "edit.txt").write_text("v1\n")
        (root / "gone.txt").write_text("bye\n")
        (root / "rewritten.txt").write_text("unchanged\n")
        (root / ".git").mkdir()
        (root / ".git" / "HEAD").write_text("x")
    (copy / "sub" / "edit.txt").write_text("v2\n")
    (copy / "gone.txt").unlink()
    (copy / "new.txt").write_text("hi\n")
    changes = compare(copy, original, ["rewritten.txt", "new.txt"])
    assert [(c.path, c.status, c.written) for c in changes] == [
        ("new.txt", "added", True),
        ("sub/edit.txt", "modified", False),
        ("gone.txt", "deleted", False),
        ("rewritten.txt", "unchanged", True),
    ]
    assert file_diff(copy, original, "sub/edit.txt").splitlines()[2:] == [
        "@@ -1 +1 @@",
        "-v1",
        "+v2",
    ]
    assert file_diff(copy, original, "gone.txt").startswith("--- a/gone.txt\n+++ /dev/null")
    assert "same as in the original" in file_diff(copy, original, "rewritten.txt")
    # Without an original, everything the thread has is new.
    assert [c.status for c in compare(copy, None)] == ["added"] * 4


# --- the approval item carries the diff -----------------------------------------------------

WRITE_TOML = """
[project]
name = "diffs"

[policy]
ask = ["write_file"]

[[agents]]
name = "a"
cascade = ["sim/instant"]

[[tasks]]
id = "w"
agent = "a"
prompt = "edit the notes"
workspace = "ws"

[[tasks.script]]
tool = "write_file"
args = { path = "notes.txt", content = "first\\nsecond, edited\\n" }

[[tasks.script]]
tool = "finish"
args = { answer = "ok" }
"""


async def test_the_approval_item_carries_the_diff_against_the_thread_workspace(
    live_factory,
) -> None:
    live = await live_factory(WRITE_TOML, {"ws/notes.txt": "first\nsecond\n"})
    await live.waiter.until(lambda: bool(live.bus.state.inbox))
    (item,) = live.bus.state.inbox.values()
    assert item.kind is InboxKind.APPROVAL
    assert item.data["diff"].splitlines() == [
        "--- a/notes.txt",
        "+++ b/notes.txt",
        "@@ -1,2 +1,2 @@",
        " first",
        "-second",
        "+second, edited",
    ]
    opened = live.kinds("w", EventKind.INBOX_OPENED)
    assert opened[0].payload["diff"] == item.data["diff"]  # logged: replay shows the same
