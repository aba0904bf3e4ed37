"""Live panels: the selected thread, its neighbours and pinned threads, each streaming its
output tail. Panels for threads not in view do not exist, so they cost nothing."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Grid
from textual.widgets import Static

from tower.core.state import ThreadView
from tower.ui.format import tokens, usd


class ThreadPanel(Static):
    DEFAULT_CSS = """
    ThreadPanel {
        border: round $panel-lighten-2;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
        padding: 0 1;
        height: 1fr;
        overflow: hidden;
    }
    ThreadPanel.-selected { border: round $accent; }
    ThreadPanel.-pinned { border: double $secondary; }
    ThreadPanel.-needs { border: round $warning; }
    ThreadPanel.-selected.-needs { border: heavy $warning; }
    """

    def __init__(self) -> None:
        super().__init__("")
        self.thread: str | None = None

    def show(self, view: ThreadView | None, selected: bool, pinned: bool) -> None:
        self.thread = view.id if view is not None else None
        self.set_class(selected, "-selected")
        self.set_class(pinned, "-pinned")
        self.set_class(view is not None and view.pending > 0, "-needs")
        if view is None:
            self.border_title = ""
            self.border_subtitle = ""
            self.update("", layout=False)
            return
        self.border_title = f"{'📌 ' if pinned else ''}{view.id} · {view.state}"
        self.border_subtitle = f"{view.model} · step {view.step} · {usd(view.cost_usd)}"
        lines_available = max(self.size.height - 1, 3)
        text = Text(no_wrap=False, overflow="fold")
        status = view.reason or ""
        if view.current_tool:
            text.append("▶ " + view.current_tool + "\n", style="bold")
        elif status:
            text.append(status + "\n", style="italic")
        text.append(f"{tokens(view.tokens)} tokens · {view.tool_calls} tool call(s)\n", style="dim")
        tail_lines = view.tail.splitlines()[-lines_available:]
        if view.answer is not None and view.state.ended:
            tail_lines = [*tail_lines[-(lines_available - 2) :], "", f"answer: {view.answer}"]
        text.append("\n".join(tail_lines))
        self.update(text, layout=False)  # the grid fixes the size: repaint only


class PanelGrid(Grid):
    """A grid whose panel count follows the terminal size (2 at 120 columns, 3 at 200)."""

    DEFAULT_CSS = """
    PanelGrid { grid-size: 3 1; grid-gutter: 0 1; height: 1fr; min-height: 8; }
    """

    def panel_count(self) -> int:
        return max(1, min(4, self.size.width // 55)) * (2 if self.size.height >= 22 else 1)

    def ensure_panels(self) -> list[ThreadPanel]:
        count = self.panel_count()
        cols = max(1, min(4, self.size.width // 55))
        rows = max(count // cols, 1)
        self.styles.grid_size_columns = cols
        self.styles.grid_size_rows = rows
        panels = list(self.query(ThreadPanel))
        if len(panels) < count:
            new = [ThreadPanel() for _ in range(count - len(panels))]
            self.mount_all(new)
            panels.extend(new)
        elif len(panels) > count:
            for extra in panels[count:]:
                extra.remove()
            panels = panels[:count]
        return panels
