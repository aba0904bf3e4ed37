"""`L`: every recorded session in the log, with how to replay, resume or export it."""

from __future__ import annotations

import time
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from tower.core.store import SessionRow


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class SessionsScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,L", "dismiss", "Close")]
    DEFAULT_CSS = """
    SessionsScreen { align: center middle; background: $background 60%; }
    SessionsScreen > Vertical {
        width: 120; max-width: 95%; height: 80%; border: thick $accent;
        background: $surface; padding: 1 2;
    }
    SessionsScreen DataTable { height: 1fr; }
    SessionsScreen Label.hint { color: $text-muted; margin-top: 1; }
    """

    def __init__(self, rows: list[SessionRow], current: str | None) -> None:
        super().__init__()
        self.rows = rows
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Sessions ({len(self.rows)})", classes="title")
            yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
            yield Label("", classes="hint", id="hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("id", "project", "started", "ended", "status", "threads", "cost")
        for r in reversed(self.rows):  # newest first
            status = "this one" if r.id == self.current else r.status
            table.add_row(
                r.id,
                r.project,
                _when(r.started),
                _when(r.ended),
                status,
                str(r.threads),
                f"${r.cost_usd:.4f}",
                key=r.id,
            )
        table.focus()
        self._hint(self.rows[-1].id if self.rows else None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._hint(event.row_key.value)

    def _hint(self, session: str | None) -> None:
        if session is None:
            self.query_one("#hint", Label).update("no sessions yet")
            return
        row = next(r for r in self.rows if r.id == session)
        resume = f"  ·  tower resume {session}" if row.status == "crashed" else ""
        self.query_one("#hint", Label).update(
            f"tower replay {session}  ·  tower export {session} --format csv{resume}"
        )

    def action_dismiss(self, result: None = None) -> None:  # type: ignore[override]
        self.dismiss(result)
