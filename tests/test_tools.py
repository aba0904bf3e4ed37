"""File tools confined to a workspace (tower/core/tools/files.py)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest

from tower.core.tools import TOOL_SCHEMAS, ToolError, Workspace, tool_schemas
from tower.core.tools.files import MAX_LIST, MAX_READ_BYTES, MAX_WRITE_BYTES


@pytest.fixture
def ws_root(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "notes.txt").write_text("hello notes", encoding="utf-8")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("deep text", encoding="utf-8")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]", encoding="utf-8")
    return root


@pytest.fixture
def ws(ws_root: Path) -> Workspace:
    return Workspace(ws_root)


def _no_tmp_files(root: Path) -> bool:
    return not any(p.name.endswith(".tower-tmp") for p in root.rglob("*"))


# --- what works ---------------------------------------------------------------------------


async def test_read_file(ws: Workspace) -> None:
    assert await ws.run("read_file", {"path": "notes.txt"}) == "hello notes"
    assert await ws.run("read_file", {"path": "sub/deep.txt"}) == "deep text"
    assert await ws.run("read_file", {"path": "./sub/../notes.txt"}) == "hello notes"


async def test_write_then_read_back(ws: Workspace, ws_root: Path) -> None:
    content = "line one\nünïcødé ✓\n"
    out = await ws.run("write_file", {"path": "out/report.md", "content": content})
    assert "out/report.md" in out
    assert str(len(content)) in out
    assert (ws_root / "out" / "report.md").read_text(encoding="utf-8") == content
    assert await ws.run("read_file", {"path": "out/report.md"}) == content


async def test_write_overwrites_atomically_without_leftovers(ws: Workspace, ws_root: Path) -> None:
    await ws.run("write_file", {"path": "notes.txt", "content": "first"})
    await ws.run("write_file", {"path": "notes.txt", "content": "second"})
    await ws.run("write_file", {"path": "a/b/c.txt", "content": "nested"})
    assert (ws_root / "notes.txt").read_text() == "second"
    assert (ws_root / "a" / "b" / "c.txt").read_text() == "nested"
    assert _no_tmp_files(ws_root)


async def test_list_dir(ws: Workspace) -> None:
    listing = (await ws.run("list_dir", {"path": "."})).splitlines()
    assert listing == sorted(["notes.txt", "sub/"])
    assert await ws.run("list_dir", {}) == "\n".join(listing)  # default is the root
    assert (await ws.run("list_dir", {"path": "sub"})).splitlines() == ["deep.txt"]


async def test_list_dir_hides_git_and_tower(ws: Workspace, ws_root: Path) -> None:
    (ws_root / ".tower").mkdir()
    (ws_root / ".hidden").write_text("x")
    names = (await ws.run("list_dir", {"path": "."})).splitlines()
    assert ".git/" not in names
    assert ".git" not in names
    assert ".tower/" not in names
    assert ".hidden" in names  # only the protected folders are hidden


async def test_list_empty_folder(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "empty").mkdir()
    assert await ws.run("list_dir", {"path": "empty"}) == "(empty folder)"


async def test_list_dir_is_capped(ws: Workspace, ws_root: Path) -> None:
    many = ws_root / "many"
    many.mkdir()
    extra = 7
    for i in range(MAX_LIST + extra):
        (many / f"f{i:04d}.txt").touch()
    lines = (await ws.run("list_dir", {"path": "many"})).splitlines()
    assert len(lines) == MAX_LIST + 1
    assert lines[:MAX_LIST] == [f"f{i:04d}.txt" for i in range(MAX_LIST)]
    assert lines[-1] == f"[{extra} more]"


async def test_large_read_is_truncated(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "big.txt").write_bytes(b"a" * (MAX_READ_BYTES + 10))
    text = await ws.run("read_file", {"path": "big.txt"})
    assert text.startswith("a" * MAX_READ_BYTES)
    assert text[MAX_READ_BYTES:].strip() == f"[truncated at {MAX_READ_BYTES} bytes]"


async def test_read_of_exactly_the_limit_is_not_truncated(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "edge.txt").write_bytes(b"b" * MAX_READ_BYTES)
    assert await ws.run("read_file", {"path": "edge.txt"}) == "b" * MAX_READ_BYTES


async def test_read_inside_symlink_within_workspace(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "alias").symlink_to(ws_root / "sub")
    assert await ws.run("read_file", {"path": "alias/deep.txt"}) == "deep text"


async def test_git_can_be_read_but_not_written(ws: Workspace) -> None:
    assert await ws.run("read_file", {"path": ".git/config"}) == "[core]"


# --- what is refused ----------------------------------------------------------------------


async def test_dotdot_escape_is_refused(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("top secret")
    for tool, args in (
        ("read_file", {"path": "../secret.txt"}),
        ("write_file", {"path": "../secret.txt", "content": "pwned"}),
        ("list_dir", {"path": ".."}),
        ("read_file", {"path": "sub/../../secret.txt"}),
    ):
        with pytest.raises(ToolError) as info:
            await ws.run(tool, args)
        assert args["path"] in str(info.value)
        assert "outside the workspace" in str(info.value)
    assert (tmp_path / "secret.txt").read_text() == "top secret"


async def test_absolute_path_outside_is_refused(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "outside.txt"
    target.write_text("outside")
    with pytest.raises(ToolError, match="outside the workspace") as info:
        await ws.run("read_file", {"path": str(target)})
    assert str(target) in str(info.value)
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("write_file", {"path": str(target), "content": "x"})
    assert target.read_text() == "outside"
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("list_dir", {"path": "/"})


async def test_symlinked_folder_pointing_outside_is_refused(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (ws.root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolError, match="outside the workspace") as info:
        await ws.run("read_file", {"path": "escape/secret.txt"})
    assert "escape/secret.txt" in str(info.value)
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("write_file", {"path": "escape/new.txt", "content": "x"})
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("list_dir", {"path": "escape"})
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_symlinked_file_pointing_outside_is_refused(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("original")
    (ws.root / "link.txt").symlink_to(target)
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("read_file", {"path": "link.txt"})
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("write_file", {"path": "link.txt", "content": "overwritten"})
    assert target.read_text() == "original"


async def test_dangling_symlink_pointing_outside_is_refused(ws: Workspace, tmp_path: Path) -> None:
    target = tmp_path / "not-yet.txt"
    (ws.root / "dangling.txt").symlink_to(target)
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("write_file", {"path": "dangling.txt", "content": "created outside?"})
    assert not target.exists()


async def test_lookalike_sibling_folder_is_refused(ws: Workspace, tmp_path: Path) -> None:
    evil = tmp_path / "proj-evil"
    evil.mkdir()
    (evil / "x").write_text("evil")
    assert ws.root.name == "proj"
    with pytest.raises(ToolError, match="outside the workspace") as info:
        await ws.run("read_file", {"path": "../proj-evil/x"})
    assert "../proj-evil/x" in str(info.value)
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("write_file", {"path": "../proj-evil/y", "content": "z"})
    with pytest.raises(ToolError, match="outside the workspace"):
        await ws.run("read_file", {"path": str(evil / "x")})
    assert not (evil / "y").exists()


async def test_nul_byte_is_refused(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="NUL"):
        await ws.run("read_file", {"path": "notes.txt\x00.png"})
    with pytest.raises(ToolError, match="NUL"):
        await ws.run("write_file", {"path": "a\x00b", "content": "x"})


@pytest.mark.parametrize("bad", [5, ["notes.txt"], {"p": 1}, b"notes.txt"])
async def test_non_string_path_is_refused(ws: Workspace, bad: object) -> None:
    with pytest.raises(ToolError, match="path must be a string"):
        await ws.run("read_file", {"path": bad})
    with pytest.raises(ToolError, match="path must be a string"):
        await ws.run("write_file", {"path": bad, "content": "x"})


async def test_missing_path_argument_is_refused(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="path must be a string"):
        await ws.run("read_file", {})


@pytest.mark.parametrize(
    "rel", [".git/config", ".git/hooks/pre-commit", "sub/../.git/x", ".tower/state"]
)
async def test_writes_into_protected_folders_are_refused(
    ws: Workspace, ws_root: Path, rel: str
) -> None:
    with pytest.raises(ToolError, match="protected") as info:
        await ws.run("write_file", {"path": rel, "content": "#!/bin/sh\nrm -rf /\n"})
    assert rel in str(info.value)
    assert (ws_root / ".git" / "config").read_text() == "[core]"
    assert not (ws_root / ".git" / "hooks").exists()
    assert not (ws_root / ".tower").exists()


async def test_write_onto_the_protected_folder_itself_is_refused(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="protected"):
        await ws.run("write_file", {"path": ".git", "content": "x"})


async def test_read_missing_file(ws: Workspace) -> None:
    with pytest.raises(ToolError, match=re.escape("no such file: nope.txt")):
        await ws.run("read_file", {"path": "nope.txt"})
    with pytest.raises(ToolError, match="no such file: sub"):
        await ws.run("read_file", {"path": "sub"})


async def test_list_missing_folder(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="no such folder: nope"):
        await ws.run("list_dir", {"path": "nope"})
    with pytest.raises(ToolError, match=re.escape("not a folder: notes.txt")):
        await ws.run("list_dir", {"path": "notes.txt"})


async def test_write_onto_a_folder_is_refused(ws: Workspace, ws_root: Path) -> None:
    with pytest.raises(ToolError, match="sub is a folder"):
        await ws.run("write_file", {"path": "sub", "content": "x"})
    assert (ws_root / "sub").is_dir()


async def test_write_needs_string_content(ws: Workspace, ws_root: Path) -> None:
    with pytest.raises(ToolError, match="content must be a string"):
        await ws.run("write_file", {"path": "n.txt", "content": 42})
    with pytest.raises(ToolError, match="content must be a string"):
        await ws.run("write_file", {"path": "n.txt"})
    assert not (ws_root / "n.txt").exists()


async def test_write_too_large_is_refused(ws: Workspace, ws_root: Path) -> None:
    # Multi-byte characters: the cap is on encoded bytes, not characters.
    content = "é" * (MAX_WRITE_BYTES // 2 + 1)
    assert len(content) <= MAX_WRITE_BYTES < len(content.encode())
    with pytest.raises(ToolError, match="larger than"):
        await ws.run("write_file", {"path": "big.txt", "content": content})
    assert not (ws_root / "big.txt").exists()
    assert _no_tmp_files(ws_root)


async def test_unknown_tool(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="unknown tool 'delete_file'"):
        await ws.run("delete_file", {"path": "notes.txt"})
    assert (ws.root / "notes.txt").exists()


def test_root_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "via").symlink_to(real, target_is_directory=True)
    ws = Workspace(tmp_path / "via" / ".." / "real")
    assert ws.root == real.resolve()
    assert ws.resolve("a/b.txt") == real.resolve() / "a" / "b.txt"
    assert ws.resolve(".") == real.resolve()


async def test_symlinked_workspace_root_still_works(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    ws = Workspace(link)
    await ws.run("write_file", {"path": "f.txt", "content": "through the link"})
    assert (real / "f.txt").read_text() == "through the link"
    assert os.path.islink(link)


def test_tool_schemas_follow_the_names_given() -> None:
    schemas = tool_schemas(["finish", "read_file", "not_a_tool"])
    assert [s["function"]["name"] for s in schemas] == ["finish", "read_file"]
    for name, schema in TOOL_SCHEMAS.items():
        assert schema["function"]["name"] == name
        params = schema["function"]["parameters"]
        assert set(params["required"]) <= set(params["properties"])


async def test_symlink_inside_pointing_at_git_cannot_be_written_through(
    ws: Workspace, ws_root: Path
) -> None:
    (ws_root / "gitlink").symlink_to(ws_root / ".git", target_is_directory=True)
    with pytest.raises(ToolError, match="protected"):
        await ws.run("write_file", {"path": "gitlink/config", "content": "x"})
    assert (ws_root / ".git" / "config").read_text() == "[core]"


async def test_planted_tmp_symlink_does_not_redirect_a_write(
    ws: Workspace, ws_root: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (ws_root / "out.txt.tower-tmp").symlink_to(victim)
    with contextlib.suppress(ToolError):  # refusing is fine too
        await ws.run("write_file", {"path": "out.txt", "content": "escaped"})
    assert victim.read_text() == "untouched"
