"""A thread's files: what it wrote, and each file's diff against the original workspace.

The list comes from comparing the thread's workspace with the task's workspace folder it
was copied from, plus every file its write_file calls wrote (per the log), even unchanged.
All file reading happens in a worker thread, never on the UI's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from rich.console import RenderableType
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from tower.core.diffs import FileChange, compare, file_diff, written_paths
from tower.core.events import Event
from tower.ui.widgets.diffview import diff_view

STATUS_STYLE = {
    "added": "green",
    "modified": "yellow",
    "deleted": "red",
    "unchanged": "dim",
    "pending": "bold magenta",
}
PENDING = "pending:"  # row keys of writes still waiting for approval


class FilesScreen(ModalScreen[None]):
    """Files the thread wrote or changed (left) and the highlighted one's diff (right).

    Modal: the tower's verbs do not reach through it (nothing here shows what they would
    act on), and its footer lists only its own keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("f5,ctrl+r", "reload", "Reload"),
    ]
    DEFAULT_CSS = """
    FilesScreen { background: $background; }
    FilesScreen #head { height: auto; padding: 0 1; background: $panel; }
    FilesScreen Horizontal { height: 1fr; }
    FilesScreen DataTable {
        width: 1fr; min-width: 30; height: 1fr; border: round $panel-lighten-2;
    }
    FilesScreen DataTable:focus { border: round $accent; }
    FilesScreen VerticalScroll { width: 3fr; border: round $panel-lighten-2; }
    FilesScreen #diff { width: auto; min-width: 100%; }
    """

    def __init__(
        self,
        thread: str,
        root: Path | None,
        original: Path | None,
        events: list[Event],
        pending: list[tuple[str, str, str]] | None = None,
    ) -> None:
        """`pending`: (item id, path, diff) of write_file calls waiting for approval, shown
        first, so the whole diff an approval is about can be read before deciding."""
        super().__init__()
        self.thread = thread
        self.pending = pending or []
        self.root = root
        self.original = original
        self.in_place = (
            root is not None and original is not None and root.resolve() == original.resolve()
        )
        self.events = events
        self.changes: list[FileChange] = []
        self.diffs: dict[str, str] = {}  # path → the diff shown (for tests and reloads)
        self.loaded = asyncio.Event()

    def compose(self) -> ComposeResult:
        yield Static(self._head(), id="head")
        with Horizontal():
            yield DataTable(id="files", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="diffbox"):
                yield Static(Text("reading the workspace…", style="dim"), id="diff")
        yield Footer()

    def _head(self) -> Text:
        text = Text(f"{self.thread} · files", style="bold")
        text.append(f"\nworkspace  {self.root if self.root else '(none yet)'}", style="")
        if self.in_place:
            text.append(
                "\nthis thread writes in the project folder itself (copy_workspaces = false): "
                "there is no original copy to compare with; files are shown whole",
                style="italic",
            )
        elif self.original is not None:
            text.append(f"\noriginal   {self.original}", style="")
        else:
            text.append("\noriginal   (none: the task has no workspace folder)", style="dim")
        return text

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.border_title = "written and changed"
        table.add_columns("status", "file")
        self.query_one(VerticalScroll).border_title = "diff"
        table.focus()
        self.action_reload()

    def action_reload(self) -> None:
        self._load(fresh=self.is_mounted and self.loaded.is_set())

    @work(exclusive=True, group="files-list")
    async def _load(self, fresh: bool = False) -> None:
        self.loaded.clear()
        read = getattr(self.app, "thread_events", None)
        if fresh and read is not None:  # a reload: what the thread wrote since
            self.events = await read(self.thread)
            pending = getattr(self.app, "pending_writes", None)
            if pending is not None:
                self.pending = pending(self.thread)
        root, original = self.root, None if self.in_place else self.original
        events = self.events
        if root is None:
            changes: list[FileChange] = []
        else:
            changes = await asyncio.to_thread(
                lambda: compare(root, original, written_paths(events, root))
            )
        if not self.is_attached:
            return  # closed while the workspace was read
        self.changes = changes
        table = self.query_one(DataTable)
        table.clear()
        for item, path, _diff in self.pending:
            status = Text(f"awaiting {item}", STATUS_STYLE["pending"])
            table.add_row(status, path, key=f"{PENDING}{item}")
        for ch in changes:
            status = Text(ch.status + (" ✎" if ch.written else ""), STATUS_STYLE[ch.status])
            table.add_row(status, ch.path, key=ch.path)
        table.border_title = f"written and changed · {len(changes)}"
        if self.pending:
            table.border_title += f" · {len(self.pending)} awaiting approval"
        table.border_subtitle = "✎ written by the thread" if changes else ""
        if self.pending:
            table.move_cursor(row=0)
            self._show_pending(self.pending[0][0])
            self.loaded.set()
            return
        if not changes:
            self._show(
                Text("This thread has not written or changed any file yet.", style="dim italic")
            )
            self.loaded.set()
            return
        table.move_cursor(row=0)
        await self._diff(changes[0].path)
        self.loaded.set()

    @on(DataTable.RowHighlighted, "#files")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is not None and key.startswith(PENDING):
            self._show_pending(key.removeprefix(PENDING))
        elif key is not None:
            self._diff_soon(key)

    def _show_pending(self, item: str) -> None:
        """The diff an approval is about: the proposed content against the file as it is."""
        found = next((p for p in self.pending if p[0] == item), None)
        if found is None:
            return
        _item, path, text = found
        self.diffs[f"{PENDING}{item}"] = text
        box = self.query_one(VerticalScroll)
        box.border_title = f"proposed · {path} · awaiting approval ({item})"
        if text.startswith("--- ") or text.startswith("@@"):
            self._show(diff_view(text, self.app.current_theme, wrap=False))
        else:
            self._show(Text(text or "(no diff recorded)", style="dim italic"))
        box.scroll_home(animate=False)

    @work(exclusive=True, group="files-diff")
    async def _diff_soon(self, rel: str) -> None:
        await self._diff(rel)

    async def _diff(self, rel: str) -> None:
        root = self.root
        if root is None:
            return
        original = None if self.in_place else self.original
        text = await asyncio.to_thread(file_diff, root, original, rel)
        if not self.is_attached:
            return  # closed while the file was read
        self.diffs[rel] = text
        box = self.query_one(VerticalScroll)
        box.border_title = f"diff · {rel}"
        if text.startswith("--- "):
            self._show(diff_view(text, self.app.current_theme, wrap=False))
        else:
            self._show(Text(text, style="dim italic"))
        box.scroll_home(animate=False)

    def _show(self, renderable: RenderableType) -> None:
        self.query_one("#diff", Static).update(renderable)
