"""File tools confined to a workspace (tower/core/tools/files.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tower.core.tools import TOOL_SCHEMAS, ToolError, Workspace, files, tool_schemas
from tower.core.tools.files import MAX_LIST, MAX_MATCHES, MAX_READ_BYTES, MAX_WRITE_BYTES


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
    # Whatever the temporary file of an atomic write is called, none may be left behind.
    return not any("tmp" in p.name for p in root.rglob("*"))


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


# --- one test per refused path case -------------------------------------------------------
#
# Each refusal is a ToolError naming the problem, and nothing outside the workspace is opened
# (every os.open the tools make is checked by its real path) or changed.

SECRET = "top secret outside"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A folder next to the workspace that the tools must never reach."""
    top = tmp_path / "elsewhere"
    top.mkdir()
    (top / "secret.txt").write_text(SECRET)
    (top / "deep.txt").write_text(SECRET)
    return top


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The real path of every file and folder opened through os.open during the test."""
    seen: list[Path] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        fd = real_open(path, flags, mode, dir_fd=dir_fd)
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return fd

    monkeypatch.setattr(files.os, "open", spy)
    return seen


def _tree(top: Path) -> dict[str, str]:
    """Names, link targets and contents under top, to show nothing there changed."""
    out: dict[str, str] = {}
    for path in sorted(top.rglob("*")):
        rel = str(path.relative_to(top))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "/"
        else:
            out[rel] = path.read_text()
    return out


def _only_inside(ws: Workspace, opened: list[Path]) -> None:
    stray = [p for p in opened if not p.is_relative_to(ws.root)]
    assert not stray, f"opened outside the workspace: {stray}"


async def _refused(ws: Workspace, tool: str, args: dict[str, Any], *words: str) -> str:
    with pytest.raises(ToolError) as info:
        await ws.run(tool, args)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert SECRET not in message
    return message


# `..`


@pytest.mark.parametrize(
    "rel",
    [
        "../elsewhere/secret.txt",
        "./../elsewhere/secret.txt",
        "sub/../../elsewhere/secret.txt",
        "sub/./../../elsewhere/secret.txt",
        "..",
    ],
)
async def test_read_dotdot_escape_is_refused(
    ws: Workspace, elsewhere: Path, opened: list[Path], rel: str
) -> None:
    await _refused(ws, "read_file", {"path": rel}, repr(rel), "outside the workspace")
    _only_inside(ws, opened)


@pytest.mark.parametrize(
    "rel", ["../elsewhere/secret.txt", "../elsewhere/new.txt", "sub/../../elsewhere/new.txt"]
)
async def test_write_dotdot_escape_is_refused(
    ws: Workspace, elsewhere: Path, opened: list[Path], rel: str
) -> None:
    before = _tree(elsewhere)
    await _refused(
        ws, "write_file", {"path": rel, "content": "pwned"}, repr(rel), "outside the workspace"
    )
    assert _tree(elsewhere) == before
    _only_inside(ws, opened)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("list_dir", {"path": "../elsewhere"}),
        ("search", {"pattern": "secret", "path": "../elsewhere"}),
        ("search", {"pattern": "secret", "path": ".."}),
    ],
)
async def test_listing_or_searching_above_the_root_is_refused(
    ws: Workspace, elsewhere: Path, opened: list[Path], tool: str, args: dict[str, str]
) -> None:
    await _refused(ws, tool, args, "outside the workspace")
    _only_inside(ws, opened)


# absolute paths


async def test_absolute_read_outside_is_refused(
    ws: Workspace, elsewhere: Path, opened: list[Path]
) -> None:
    target = str(elsewhere / "secret.txt")
    await _refused(ws, "read_file", {"path": target}, repr(target), "outside the workspace")
    _only_inside(ws, opened)


@pytest.mark.parametrize("name", ["secret.txt", "new.txt"])
async def test_absolute_write_outside_is_refused(
    ws: Workspace, elsewhere: Path, opened: list[Path], name: str
) -> None:
    before = _tree(elsewhere)
    target = str(elsewhere / name)
    await _refused(
        ws, "write_file", {"path": target, "content": "x"}, repr(target), "outside the workspace"
    )
    assert _tree(elsewhere) == before
    _only_inside(ws, opened)


@pytest.mark.parametrize("tool", ["list_dir", "search"])
async def test_absolute_folder_outside_is_refused_for_listing_and_search(
    ws: Workspace, elsewhere: Path, opened: list[Path], tool: str
) -> None:
    await _refused(ws, tool, {"path": str(elsewhere), "pattern": "secret"}, "outside the workspace")
    _only_inside(ws, opened)


async def test_absolute_path_that_climbs_out_of_the_workspace_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    sneaky = f"{ws_root}/../elsewhere/secret.txt"
    await _refused(ws, "read_file", {"path": sneaky}, "outside the workspace")
    _only_inside(ws, opened)


async def test_absolute_path_inside_the_workspace_works(
    ws: Workspace, ws_root: Path, opened: list[Path]
) -> None:
    assert await ws.run("read_file", {"path": str(ws_root / "notes.txt")}) == "hello notes"
    await ws.run("write_file", {"path": str(ws_root / "out" / "a.txt"), "content": "abs"})
    assert (ws_root / "out" / "a.txt").read_text() == "abs"
    assert (await ws.run("list_dir", {"path": str(ws_root)})).splitlines() == [
        "notes.txt",
        "out/",
        "sub/",
    ]
    assert await ws.run("list_dir", {"path": str(ws_root / "sub")}) == "deep.txt"
    found = await ws.run("search", {"pattern": "deep", "path": str(ws_root / "sub")})
    assert found == "sub/deep.txt:1: deep text"
    _only_inside(ws, opened)


# symbolic links leading outside


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute-target", "relative-target"])
async def test_read_through_a_file_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path], absolute: bool
) -> None:
    target = elsewhere / "secret.txt" if absolute else Path("../elsewhere/secret.txt")
    (ws_root / "link.txt").symlink_to(target)
    await _refused(
        ws, "read_file", {"path": "link.txt"}, "link.txt", "outside the workspace", "symbolic link"
    )
    _only_inside(ws, opened)


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute-target", "relative-target"])
async def test_write_through_a_file_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path], absolute: bool
) -> None:
    target = elsewhere / "secret.txt" if absolute else Path("../elsewhere/secret.txt")
    (ws_root / "link.txt").symlink_to(target)
    before = _tree(elsewhere)
    await _refused(
        ws, "write_file", {"path": "link.txt", "content": "pwned"}, "outside the workspace"
    )
    assert _tree(elsewhere) == before
    assert (ws_root / "link.txt").is_symlink()
    _only_inside(ws, opened)


@pytest.mark.parametrize("absolute", [True, False], ids=["absolute-target", "relative-target"])
async def test_read_through_a_folder_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path], absolute: bool
) -> None:
    target = elsewhere if absolute else Path("../elsewhere")
    (ws_root / "escape").symlink_to(target, target_is_directory=True)
    await _refused(
        ws, "read_file", {"path": "escape/secret.txt"}, "escape/secret.txt", "outside the workspace"
    )
    _only_inside(ws, opened)


@pytest.mark.parametrize("rel", ["escape/new.txt", "escape/a/b/new.txt", "escape/secret.txt"])
async def test_write_into_a_folder_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path], rel: str
) -> None:
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    before = _tree(elsewhere)
    await _refused(ws, "write_file", {"path": rel, "content": "x"}, "outside the workspace")
    assert _tree(elsewhere) == before
    _only_inside(ws, opened)


async def test_list_dir_of_a_folder_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    await _refused(ws, "list_dir", {"path": "escape"}, "outside the workspace")
    _only_inside(ws, opened)


async def test_list_dir_shows_a_link_outside_without_following_it(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    listing = (await ws.run("list_dir", {"path": "."})).splitlines()
    assert "escape" in listing
    assert "secret.txt" not in listing
    _only_inside(ws, opened)


async def test_search_does_not_follow_links_outside(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    (ws_root / "link.txt").symlink_to(elsewhere / "secret.txt")
    (ws_root / "sub" / "up").symlink_to("../../elsewhere", target_is_directory=True)
    out = await ws.run("search", {"pattern": "secret"})
    assert out.startswith("no matches")
    assert SECRET not in out
    assert not [p for p in opened if not p.is_relative_to(ws.root) and not p.is_dir()]


async def test_search_does_not_even_open_folders_outside_through_links(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    # Nothing outside is listed, but opening a folder outside is already following the link
    # (an automount or a hung network mount behind it would be touched).
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    assert (await ws.run("search", {"pattern": "secret"})).startswith("no matches")
    _only_inside(ws, opened)


async def test_search_in_a_folder_link_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    (ws_root / "escape").symlink_to(elsewhere, target_is_directory=True)
    await _refused(ws, "search", {"pattern": "secret", "path": "escape"}, "outside the workspace")
    _only_inside(ws, opened)


async def test_a_chain_of_links_ending_outside_is_refused(
    ws: Workspace, ws_root: Path, elsewhere: Path, opened: list[Path]
) -> None:
    (ws_root / "sub" / "hop2").symlink_to("../../elsewhere", target_is_directory=True)
    (ws_root / "hop1").symlink_to("sub/hop2", target_is_directory=True)
    await _refused(ws, "read_file", {"path": "hop1/secret.txt"}, "outside the workspace")
    _only_inside(ws, opened)


async def test_a_link_loop_is_refused(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "a").symlink_to("b")
    (ws_root / "b").symlink_to("a")
    await _refused(ws, "read_file", {"path": "a/x"}, "too many symbolic links")


# a link swapped in between the check and the use (the race, made deterministic)


def _right_after(
    monkeypatch: pytest.MonkeyPatch, func: str, name: str, swap: Callable[[], None]
) -> list[str]:
    """Runs swap once, right after the walk has called os.<func> on `name` (relative to a
    folder handle): exactly the window an attacker would race for."""
    fired: list[str] = []
    real = getattr(os, func)

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        result = real(path, *args, **kwargs)
        if path == name and kwargs.get("dir_fd") is not None and not fired:
            fired.append(name)
            swap()
        return result

    monkeypatch.setattr(files.os, func, spy)
    return fired


def _swap_for_link(path: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        path.rename(path.with_name(path.name + "-was"))
        path.symlink_to(target, target_is_directory=target.is_dir())

    return swap


async def test_folder_swapped_for_a_link_before_a_read_is_refused(
    ws: Workspace,
    ws_root: Path,
    elsewhere: Path,
    opened: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fired = _right_after(monkeypatch, "stat", "sub", _swap_for_link(ws_root / "sub", elsewhere))
    message = await _refused(ws, "read_file", {"path": "sub/deep.txt"})
    assert fired == ["sub"]
    _only_inside(ws, opened)
    assert "changed while being opened" in message


async def test_folder_swapped_for_a_link_before_a_write_is_refused(
    ws: Workspace,
    ws_root: Path,
    elsewhere: Path,
    opened: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _tree(elsewhere)
    fired = _right_after(monkeypatch, "stat", "sub", _swap_for_link(ws_root / "sub", elsewhere))
    message = await _refused(ws, "write_file", {"path": "sub/new.txt", "content": "pwned"})
    assert fired == ["sub"]
    assert _tree(elsewhere) == before
    _only_inside(ws, opened)
    assert "changed while being opened" in message


async def test_file_swapped_for_a_link_before_a_read_is_refused(
    ws: Workspace,
    ws_root: Path,
    elsewhere: Path,
    opened: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    swap = _swap_for_link(ws_root / "notes.txt", elsewhere / "secret.txt")
    fired = _right_after(monkeypatch, "stat", "notes.txt", swap)
    await _refused(ws, "read_file", {"path": "notes.txt"}, "changed while being opened")
    assert fired == ["notes.txt"]
    _only_inside(ws, opened)


async def test_file_swapped_for_a_link_before_a_write_is_not_written_through(
    ws: Workspace,
    ws_root: Path,
    elsewhere: Path,
    opened: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _tree(elsewhere)
    swap = _swap_for_link(ws_root / "notes.txt", elsewhere / "secret.txt")
    fired = _right_after(monkeypatch, "stat", "notes.txt", swap)
    try:
        await ws.run("write_file", {"path": "notes.txt", "content": "new"})
    except ToolError:
        pass  # refusing is as good as replacing the link
    else:  # the link itself was replaced by the new file
        assert not (ws_root / "notes.txt").is_symlink()
        assert (ws_root / "notes.txt").read_text() == "new"
    assert fired == ["notes.txt"]
    assert _tree(elsewhere) == before
    _only_inside(ws, opened)


async def test_link_target_swapped_after_it_was_read_is_refused(
    ws: Workspace,
    ws_root: Path,
    elsewhere: Path,
    opened: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (ws_root / "alias").symlink_to("sub", target_is_directory=True)
    swap = _swap_for_link(ws_root / "sub", elsewhere)
    fired = _right_after(monkeypatch, "readlink", "alias", swap)
    await _refused(ws, "read_file", {"path": "alias/deep.txt"}, "outside the workspace")
    assert fired == ["alias"]
    _only_inside(ws, opened)


# NUL bytes


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("read_file", {"path": "notes.txt\x00.png"}),
        ("write_file", {"path": "a\x00b", "content": "x"}),
        ("list_dir", {"path": "sub\x00"}),
        ("search", {"pattern": "deep", "path": "sub\x00"}),
    ],
)
async def test_nul_byte_in_a_path_is_refused(
    ws: Workspace, ws_root: Path, tool: str, args: dict[str, str]
) -> None:
    before = _tree(ws_root)
    await _refused(ws, tool, args, "NUL")
    assert _tree(ws_root) == before


# a look-alike sibling folder


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        ("read_file", "../proj-evil/x"),
        ("read_file", "{evil}/x"),
        ("write_file", "../proj-evil/y"),
        ("write_file", "{evil}/y"),
        ("list_dir", "{evil}"),
    ],
)
async def test_lookalike_sibling_folder_is_refused_per_case(
    ws: Workspace, tmp_path: Path, opened: list[Path], tool: str, path: str
) -> None:
    evil = tmp_path / "proj-evil"
    evil.mkdir()
    (evil / "x").write_text("evil")
    assert ws.root.name == "proj"
    assert str(evil).startswith(str(ws.root))  # a plain string prefix check would be fooled
    rel = path.format(evil=evil)
    await _refused(ws, tool, {"path": rel, "content": "z"}, repr(rel), "outside the workspace")
    assert _tree(evil) == {"x": "evil"}
    _only_inside(ws, opened)


# protected places


@pytest.mark.parametrize(
    "rel",
    [
        "sub/.git/config",
        "sub/new/.git/HEAD",
        "sub/.tower/state",
        "{root}/.git/config",
        "{root}/sub/.git/config",
    ],
)
async def test_writes_into_nested_git_and_tower_are_refused(
    ws: Workspace, ws_root: Path, rel: str
) -> None:
    (ws_root / "sub" / ".git").mkdir()
    (ws_root / "sub" / ".git" / "config").write_text("[nested]")
    before = _tree(ws_root)
    rel = rel.format(root=ws_root)
    await _refused(ws, "write_file", {"path": rel, "content": "x"}, repr(rel), "protected")
    assert _tree(ws_root) == before  # not even the folders on the way were made


@pytest.mark.parametrize(
    "rel",
    [
        "tower.toml",
        "./tower.toml",
        "sub/../tower.toml",
        "{root}/tower.toml",
        "keys.toml",
        "tower.db",
        "tower.db-wal",
        "tower.db-shm",
    ],
)
async def test_writes_to_towers_own_files_at_the_top_are_refused(
    ws: Workspace, ws_root: Path, rel: str
) -> None:
    (ws_root / "tower.toml").write_text("[project]\n")
    before = _tree(ws_root)
    rel = rel.format(root=ws_root)
    await _refused(ws, "write_file", {"path": rel, "content": "x"}, repr(rel), "protected")
    assert _tree(ws_root) == before


async def test_write_to_tower_toml_through_a_link_is_refused(ws: Workspace, ws_root: Path) -> None:
    (ws_root / "tower.toml").write_text("[project]\n")
    (ws_root / "alias.toml").symlink_to("tower.toml")
    await _refused(ws, "write_file", {"path": "alias.toml", "content": "x"}, "protected")
    assert (ws_root / "tower.toml").read_text() == "[project]\n"


async def test_a_tower_toml_below_the_top_is_an_ordinary_file(ws: Workspace, ws_root: Path) -> None:
    await ws.run("write_file", {"path": "sub/tower.toml", "content": "fixture"})
    assert (ws_root / "sub" / "tower.toml").read_text() == "fixture"


@pytest.mark.parametrize(
    "rel",
    ["data/session.db", "./data/../data/session.db", "{root}/data/session.db", "dl/session.db"],
)
async def test_writes_to_an_extra_protected_file_are_refused(ws_root: Path, rel: str) -> None:
    (ws_root / "data").mkdir()
    (ws_root / "data" / "session.db").write_text("db")
    (ws_root / "dl").symlink_to("data", target_is_directory=True)
    ws = Workspace(ws_root, protected=(ws_root / "data" / "session.db",))
    rel = rel.format(root=ws_root)
    await _refused(ws, "write_file", {"path": rel, "content": "x"}, repr(rel), "protected")
    assert (ws_root / "data" / "session.db").read_text() == "db"
    # Its neighbours are not protected, and it can still be read.
    await ws.run("write_file", {"path": "data/other.db", "content": "ok"})
    assert (ws_root / "data" / "other.db").read_text() == "ok"
    assert await ws.run("read_file", {"path": "data/session.db"}) == "db"


async def test_refused_write_through_a_link_into_git_creates_nothing(
    ws: Workspace, ws_root: Path
) -> None:
    (ws_root / "gitlink").symlink_to(ws_root / ".git", target_is_directory=True)
    before = _tree(ws_root / ".git")
    await _refused(
        ws,
        "write_file",
        {"path": "gitlink/hooks/pre-commit", "content": "#!/bin/sh\n"},
        "protected",
    )
    assert _tree(ws_root / ".git") == before


# named pipes: neither read nor search may block on one


def _unblock(fifo: Path) -> None:
    """Lets a reader stuck opening the pipe go on; does nothing when no reader waits."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_read_of_a_named_pipe_is_refused_without_blocking(
    ws: Workspace, ws_root: Path
) -> None:
    fifo = ws_root / "pipe"
    os.mkfifo(fifo)
    try:
        with pytest.raises(ToolError, match="not a regular file"):
            await asyncio.wait_for(ws.run("read_file", {"path": "pipe"}), timeout=5)
    finally:
        _unblock(fifo)


async def test_search_skips_a_named_pipe_without_blocking(ws: Workspace, ws_root: Path) -> None:
    fifo = ws_root / "pipe"
    os.mkfifo(fifo)
    try:
        out = await asyncio.wait_for(ws.run("search", {"pattern": "deep"}), timeout=5)
    finally:
        _unblock(fifo)
    assert out == "sub/deep.txt:1: deep text"


# --- symbolic links that stay inside work --------------------------------------------------


async def test_file_link_inside_reads_and_writes_its_target(
    ws: Workspace, ws_root: Path, opened: list[Path]
) -> None:
    (ws_root / "link.txt").symlink_to("notes.txt")
    assert await ws.run("read_file", {"path": "link.txt"}) == "hello notes"
    await ws.run("write_file", {"path": "link.txt", "content": "through the link"})
    assert (ws_root / "notes.txt").read_text() == "through the link"
    assert (ws_root / "link.txt").is_symlink()
    _only_inside(ws, opened)


async def test_folder_link_inside_with_an_absolute_target_works(
    ws: Workspace, ws_root: Path, opened: list[Path]
) -> None:
    (ws_root / "alias").symlink_to(ws_root / "sub", target_is_directory=True)
    assert await ws.run("read_file", {"path": "alias/deep.txt"}) == "deep text"
    await ws.run("write_file", {"path": "alias/new/x.txt", "content": "via alias"})
    assert (ws_root / "sub" / "new" / "x.txt").read_text() == "via alias"
    assert (await ws.run("list_dir", {"path": "alias"})).splitlines() == ["deep.txt", "new/"]
    found = await ws.run("search", {"pattern": "via alias", "path": "alias"})
    assert found == "alias/new/x.txt:1: via alias"
    _only_inside(ws, opened)


async def test_relative_link_climbing_but_staying_inside_works(
    ws: Workspace, ws_root: Path, opened: list[Path]
) -> None:
    (ws_root / "sub" / "up").symlink_to("..", target_is_directory=True)
    assert await ws.run("read_file", {"path": "sub/up/notes.txt"}) == "hello notes"
    assert await ws.run("read_file", {"path": "sub/up/sub/up/sub/deep.txt"}) == "deep text"
    assert ws.resolve("sub/up/notes.txt") == ws_root.resolve() / "notes.txt"
    _only_inside(ws, opened)


# --- search -------------------------------------------------------------------------------


@pytest.fixture
def code_ws(ws_root: Path) -> Workspace:
    (ws_root / "src").mkdir()
    (ws_root / "src" / "a.py").write_text("import os\n\nneedle = 1\n")
    (ws_root / "src" / "b.txt").write_text("a needle here\nNEEDLE shouting\n")
    (ws_root / "other.md").write_text("nothing to see\n")
    return Workspace(ws_root)


async def test_search_reports_path_line_and_text(code_ws: Workspace) -> None:
    out = await code_ws.run("search", {"pattern": "needle"})
    assert sorted(out.splitlines()) == ["src/a.py:3: needle = 1", "src/b.txt:1: a needle here"]


async def test_search_respects_the_glob(code_ws: Workspace) -> None:
    assert await code_ws.run("search", {"pattern": "needle", "glob": "*.py"}) == (
        "src/a.py:3: needle = 1"
    )
    assert await code_ws.run("search", {"pattern": "needle", "glob": "src/*.txt"}) == (
        "src/b.txt:1: a needle here"
    )
    assert (await code_ws.run("search", {"pattern": "needle", "glob": "*.md"})).startswith(
        "no matches"
    )
    with pytest.raises(ToolError, match="glob must be a string"):
        await code_ws.run("search", {"pattern": "needle", "glob": ["*.py"]})


async def test_search_respects_the_path(code_ws: Workspace) -> None:
    only_sub = await code_ws.run("search", {"pattern": "e", "path": "sub"})
    assert only_sub == "sub/deep.txt:1: deep text"
    in_src = await code_ws.run("search", {"pattern": "needle", "path": "src"})
    assert sorted(in_src.splitlines()) == ["src/a.py:3: needle = 1", "src/b.txt:1: a needle here"]
    assert await code_ws.run("search", {"pattern": "needle", "path": "./sub/../src"}) == in_src
    assert (await code_ws.run("search", {"pattern": "needle", "path": "sub"})).startswith(
        "no matches"
    )
    with pytest.raises(ToolError, match="no such folder: nope"):
        await code_ws.run("search", {"pattern": "needle", "path": "nope"})


async def test_search_case_and_regex_options(code_ws: Workspace) -> None:
    out = await code_ws.run("search", {"pattern": "NEEDLE", "ignore_case": True})
    assert len(out.splitlines()) == 3
    assert await code_ws.run("search", {"pattern": "NEEDLE"}) == "src/b.txt:2: NEEDLE shouting"
    regex = await code_ws.run("search", {"pattern": r"needle\s*=\s*\d", "regex": True})
    assert regex == "src/a.py:3: needle = 1"
    # Without regex the pattern is literal text: "." is a dot, "(" is fine.
    assert (await code_ws.run("search", {"pattern": "needle = ."})).startswith("no matches")
    assert (await code_ws.run("search", {"pattern": "("})).startswith("no matches")


async def test_search_with_a_bad_regex_is_a_tool_error(code_ws: Workspace) -> None:
    with pytest.raises(ToolError, match="not a valid regular expression"):
        await code_ws.run("search", {"pattern": "needle(", "regex": True})


@pytest.mark.parametrize("pattern", ["", None, 5])
async def test_search_needs_a_pattern(code_ws: Workspace, pattern: object) -> None:
    with pytest.raises(ToolError, match="pattern must be a non-empty string"):
        await code_ws.run("search", {"pattern": pattern})


async def test_search_skips_binary_files(code_ws: Workspace, ws_root: Path) -> None:
    (ws_root / "src" / "blob.bin").write_bytes(b"needle\x00\x01\x02needle")
    out = await code_ws.run("search", {"pattern": "needle"})
    assert "blob.bin" not in out
    assert len(out.splitlines()) == 2


async def test_search_skips_git_and_tower_at_any_depth(code_ws: Workspace, ws_root: Path) -> None:
    (ws_root / ".git" / "needle.txt").write_text("needle")
    (ws_root / ".tower").mkdir()
    (ws_root / ".tower" / "n.txt").write_text("needle")
    (ws_root / "src" / ".git").mkdir()
    (ws_root / "src" / ".git" / "n.txt").write_text("needle")
    out = await code_ws.run("search", {"pattern": "needle"})
    assert ".git" not in out
    assert ".tower" not in out
    assert len(out.splitlines()) == 2


async def test_search_skips_symlinked_files(code_ws: Workspace, ws_root: Path) -> None:
    (ws_root / "alias.py").symlink_to("src/a.py")
    out = await code_ws.run("search", {"pattern": "needle", "glob": "*.py"})
    assert out == "src/a.py:3: needle = 1"


async def test_search_is_capped_at_max_matches(code_ws: Workspace, ws_root: Path) -> None:
    (ws_root / "many.txt").write_text("".join(f"hit {i}\n" for i in range(MAX_MATCHES + 5)))
    lines = (await code_ws.run("search", {"pattern": "hit"})).splitlines()
    assert lines[:MAX_MATCHES] == [f"many.txt:{i + 1}: hit {i}" for i in range(MAX_MATCHES)]
    assert len(lines) == MAX_MATCHES + 1
    assert str(MAX_MATCHES) in lines[-1]
    assert not lines[-1].startswith("many.txt:")


async def test_search_of_exactly_max_matches_is_not_marked(
    code_ws: Workspace, ws_root: Path
) -> None:
    (ws_root / "many.txt").write_text("hit\n" * MAX_MATCHES)
    lines = (await code_ws.run("search", {"pattern": "hit"})).splitlines()
    assert len(lines) == MAX_MATCHES
    assert all(line.startswith("many.txt:") for line in lines)


async def test_search_shortens_long_lines(code_ws: Workspace, ws_root: Path) -> None:
    (ws_root / "long.txt").write_text("needle" + "x" * 10_000 + "\n")
    out = await code_ws.run("search", {"pattern": "needle", "glob": "long.txt"})
    assert out.startswith("long.txt:1: needlexxx")
    assert len(out) < 1_000


@pytest.mark.parametrize("separator", ["\f", "\x1c", "\u2028"], ids=["formfeed", "fs", "u2028"])
async def test_search_line_numbers_count_newlines_only(
    ws: Workspace, ws_root: Path, separator: str
) -> None:
    # grep, editors and tracebacks number lines by "\n"; a form feed (common in C and Python
    # sources) or a Unicode line separator inside a line must not shift the numbers.
    (ws_root / "page.txt").write_text(f"one{separator}still line one\nneedle\n", encoding="utf-8")
    assert await ws.run("search", {"pattern": "needle"}) == "page.txt:2: needle"
