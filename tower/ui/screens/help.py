"""`?`: every key, generated from the live bindings (so remapped keys show as remapped)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; background: $background 60%; }
    HelpScreen VerticalScroll {
        width: 90; max-width: 95%; height: 85%; border: thick $accent;
        background: $surface; padding: 1 2;
    }
    """

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows  # (keys, action, description)

    def compose(self) -> ComposeResult:
        table = Table(title="tower keys", expand=True, show_lines=False)
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does")
        table.add_column("id (for keys.toml)", style="dim")
        for keys, action, description in self.rows:
            table.add_row(keys, description, action)
        with VerticalScroll():
            yield Static(table)
            yield Static(
                "\nRemap any key in keys.toml in tower's config folder: "
                '[keys] kill = "K". Also: tab cycles focus, enter opens a thread, '
                "j/k or arrows move, escape closes dialogs."
            )

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
