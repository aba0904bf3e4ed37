"""A keyboard list drawn with Textual's Line API: only the visible rows are rendered.

The thread list and the inbox can hold thousands of rows that change many times a second;
here a change costs one `refresh()` and the rendering of the lines on screen, never a widget
per row.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size, Spacing
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tower.core.state import TowerState

# A drawn row: (text, style) pieces; the texts are single-width characters, cut to fit.
Cells = list[tuple[str, Style | None]]


class RowList(ScrollView, can_focus=True):
    """Rows identified by string keys; a header line on top; a cursor that follows its key."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = {"rowlist--header", "rowlist--cursor"}
    DEFAULT_CSS = """
    RowList { background: $surface; }
    RowList > .rowlist--header { text-style: bold; color: $text-muted; }
    RowList > .rowlist--cursor { background: $accent 30%; }
    RowList:focus > .rowlist--cursor { background: $accent 55%; }
    """

    cursor: reactive[int] = reactive(0)

    class Highlighted(Message):
        def __init__(self, rowlist: RowList, key: str | None) -> None:
            super().__init__()
            self.rowlist = rowlist
            self.key = key

        @property
        def control(self) -> RowList:
            return self.rowlist

    class Selected(Highlighted):
        """Enter on a row."""

    def __init__(self, *, name: str | None = None, id: str | None = None) -> None:
        super().__init__(name=name, id=id)
        self._style_cache: dict[str, Style] = {}
        self.rows: list[str] = []
        self._last_key: str | None = None
        self.cursor_hidden = False  # no row is selected (drawn without the cursor bar)
        # Called at once when the row under the cursor changes (instead of a message).
        self.on_highlight: Callable[[RowList, str | None], None] | None = None

    # --- data -------------------------------------------------------------------------

    @property
    def current(self) -> str | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def set_rows(self, keys: list[str]) -> None:
        """Replaces the rows; the cursor stays on the same key when it is still there."""
        key = self.current
        self.rows = keys
        self.virtual_size = Size(self.size.width, len(keys) + 1)
        if key is not None and key in keys:
            index = keys.index(key)
            if index != self.cursor:
                self.cursor = index
        elif self.cursor >= len(keys):
            self.cursor = max(len(keys) - 1, 0)
        self._announce()
        self.refresh()

    def select_key(self, key: str) -> bool:
        if key in self.rows:
            self.cursor = self.rows.index(key)
            return True
        return False

    def _announce(self) -> None:
        key = self.current
        if key != self._last_key:
            self._last_key = key
            if self.on_highlight is not None:
                # Synchronously: a key pressed right after a cursor move must find the
                # screen (and what verbs act on) already following the cursor.
                self.on_highlight(self, key)
            else:
                self.post_message(self.Highlighted(self, key))

    def watch_cursor(self, value: int) -> None:
        if self.rows:
            # +1: the header occupies the first line.
            self.scroll_to_region(
                Region(0, value + 1, 1, 1), spacing=Spacing(1, 0, 0, 0), animate=False, force=True
            )
        self._announce()
        self.refresh()

    # --- keys -------------------------------------------------------------------------

    def action_cursor(self, delta: int) -> None:
        if self.rows:
            self.cursor = min(max(self.cursor + delta, 0), len(self.rows) - 1)

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(self.size.height - 2, 1))

    def action_jump(self, where: int) -> None:
        if self.rows:
            self.cursor = 0 if where == 0 else len(self.rows) - 1

    def key_enter(self) -> None:
        if self.current is not None:
            self.post_message(self.Selected(self, self.current))

    async def _on_click(self, event) -> None:
        row = event.y + self.scroll_offset.y - 1
        if 0 <= row < len(self.rows):
            self.cursor = row

    # --- drawing ------------------------------------------------------------------------

    def style_of(self, component: str) -> Style:
        """A component class's style, cached until the styles change (theme switch)."""
        cache = self._style_cache
        style = cache.get(component)
        if style is None:
            style = cache[component] = self.get_component_rich_style(component)
        return style

    def notify_style_update(self) -> None:
        self._style_cache.clear()
        super().notify_style_update()

    def header(self, width: int) -> Cells:
        return []

    def row(self, key: str, width: int) -> Cells:
        """Subclasses draw their rows; a bare RowList shows its keys."""
        return [(key, None)]

    def render_line(self, y: int) -> Strip:
        # The region left of the scrollbar: rows drawn to the full width lost their last
        # column (AGE) under it.
        width = self.scrollable_content_region.width
        base = self.rich_style
        bar: Style | None = None  # the cursor's background, on the cursor row
        if y == 0:
            cells = self.header(width)
            line_style = base + self.style_of("rowlist--header")
        else:
            index = y - 1 + self.scroll_offset.y
            if index >= len(self.rows):
                return Strip.blank(width, base)
            cells = self.row(self.rows[index], width)
            line_style = base
            if index == self.cursor and not self.cursor_hidden:
                cursor = self.style_of("rowlist--cursor")
                line_style = base + cursor
                bar = Style(bgcolor=cursor.bgcolor)
        segments = []
        for text, style in cells:
            seg = line_style if style is None else line_style + style
            if bar is not None and style is not None:
                seg += bar  # a cell's own background (a coloured state) must not hide the bar
            segments.append(Segment(text, seg))
        length = sum(len(text) for text, _ in cells)
        return Strip(segments, length).crop_extend(0, width, line_style)


class StateList(RowList):
    """A RowList drawn from the tower's state, with a clock for ages.

    Textual paints rows whenever it composes a frame, not only inside the app's tick, so the
    rows are drawn holding `lock` (the bus's lock, in the live app): the core thread never
    changes a thread or an item halfway through its row.
    """

    def __init__(
        self,
        state: Callable[[], TowerState],
        now: Callable[[], float],
        *,
        id: str | None = None,
        lock: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        super().__init__(id=id)
        self._state = state
        self._now = now
        self._lock = lock

    def render_lines(self, crop: Region) -> list[Strip]:
        with self._lock():
            return super().render_lines(crop)
