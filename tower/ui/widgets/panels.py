"""Live panels: the selected thread, its neighbours and pinned threads, each streaming its
output tail. Panels for threads not in view do not exist, so they cost nothing."""

from __future__ import annotations

import copy

from rich.console import Console
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
        self._view: ThreadView | None = None
        self.marks: tuple[bool, bool] | None = None  # (selected, pinned) when last drawn

    def show(self, view: ThreadView | None, selected: bool, pinned: bool) -> None:
        """Called with the state's lock held; a copy of the view is kept for `on_resize`,
        which Textual calls outside it (the core thread may be changing the live one)."""
        self.thread = view.id if view is not None else None
        self._view = copy.copy(view)
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
        self.update(self._body(view), layout=False)  # the grid fixes the size: repaint only

    def on_resize(self) -> None:
        """The lines are wrapped to the width: a new size wraps them again."""
        if self._view is not None:
            self.update(self._body(self._view), layout=False)

    def _body(self, view: ThreadView) -> Text:
        """The status lines, then the newest output wrapped to the panel's width, bottom
        aligned: the last line on screen is the newest line (and the answer, once done).

        Wrapping is done here, not by the widget, so the lines kept are screen lines: keeping
        N source lines and letting them wrap pushed the newest ones out of sight.
        """
        width = max(self.content_size.width, 10)
        height = max(self.content_size.height, 3)
        head = Text(no_wrap=True, overflow="ellipsis")
        status = view.reason or ""
        if view.current_tool:
            head.append("▶ " + view.current_tool + "\n", style="bold")
        elif status:
            head.append(status + "\n", style="italic")
        head.append(f"{tokens(view.tokens)} tokens · {view.tool_calls} tool call(s)", style="dim")
        head_lines = head.wrap(_console(self), width, no_wrap=True)
        room = max(height - len(head_lines), 1)
        # Only the end of the tail can show: wrap no more than a screenful of it.
        source = view.tail[-(room * width * 2 + 200) :].rstrip("\n")
        body = Text(source)
        if view.answer is not None and view.state.ended:
            body.append("\n\nanswer: ", style="bold")
            body.append(view.answer)
        lines = body.wrap(_console(self), width, overflow="fold")
        kept = list(lines)[-room:]
        out = Text("\n").join([*head_lines, *kept])
        out.no_wrap = True
        out.overflow = "crop"
        return out


def _console(widget: Static) -> Console:
    return widget.app.console


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
