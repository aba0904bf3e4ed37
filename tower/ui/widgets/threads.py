"""The thread list: every thread one row, sortable and filterable, needs-you rows marked."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text

from tower.core.events import ThreadState
from tower.core.state import ThreadView, TowerState
from tower.ui.format import age, fit, tokens, usd
from tower.ui.widgets.rowlist import RowList

# Column name, width (None: takes the rest).
COLUMNS: list[tuple[str, int | None]] = [
    ("", 1),
    ("ID", 16),
    ("AGENT", 10),
    ("TASK", None),
    ("STATE", 8),
    ("MODEL", 9),
    ("STEP", 4),
    ("TOKENS", 7),
    ("COST", 9),
    ("AGE", 6),
]
_RIGHT = {"STEP", "TOKENS", "COST", "AGE"}
MIN_TASK = 16

SORTS = ("spawned", "id", "state", "cost", "tokens", "age", "model")

# Needs-you states first when sorting by state.
_STATE_RANK = {
    ThreadState.WAITING: 0,
    ThreadState.FAILED: 1,
    ThreadState.PAUSED: 2,
    ThreadState.RUNNING: 3,
    ThreadState.QUEUED: 4,
    ThreadState.DONE: 5,
    ThreadState.KILLED: 6,
}


def needs_you(view: ThreadView) -> bool:
    return view.pending > 0


def matches(view: ThreadView, needle: str) -> bool:
    hay = f"{view.id} {view.agent} {view.title} {view.state} {view.model} {view.reason}".lower()
    return all(part in hay for part in needle.lower().split())


class ThreadList(RowList):
    COMPONENT_CLASSES: ClassVar[set[str]] = RowList.COMPONENT_CLASSES | {
        *(f"threads--{s}" for s in ThreadState),
        "threads--needs",
    }
    DEFAULT_CSS = """
    ThreadList > .threads--running { color: $success; }
    ThreadList > .threads--waiting { color: $warning; text-style: bold; }
    ThreadList > .threads--paused { color: $secondary; }
    ThreadList > .threads--queued { color: $text-muted; }
    ThreadList > .threads--done { color: $text-muted; }
    ThreadList > .threads--failed { color: $error; text-style: bold; }
    ThreadList > .threads--killed { color: $error 60%; }
    ThreadList > .threads--needs { color: $warning; text-style: bold; }
    """

    def __init__(
        self, state: Callable[[], TowerState], now: Callable[[], float], *, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self._state = state
        self._now = now
        self.filter_text = ""
        self.sort_key = "spawned"
        self.reverse = False

    def rebuild(self) -> None:
        """Recomputes which threads show, in which order, from the current state."""
        views = list(self._state().threads.values())
        if self.filter_text:
            views = [v for v in views if matches(v, self.filter_text)]
        key = self.sort_key
        if key == "id":
            views.sort(key=lambda v: v.id)
        elif key == "state":
            views.sort(key=lambda v: (_STATE_RANK[v.state], -v.pending))
        elif key == "cost":
            views.sort(key=lambda v: -v.cost_usd)
        elif key == "tokens":
            views.sort(key=lambda v: -v.tokens)
        elif key == "age":
            views.sort(key=lambda v: v.created)
        elif key == "model":
            views.sort(key=lambda v: v.model)
        if self.reverse:
            views.reverse()
        self.set_rows([v.id for v in views])

    def _widths(self, width: int) -> list[int]:
        """Column widths for this width; AGENT and MODEL give way before TASK gets too thin."""
        widths = [w or 0 for _, w in COLUMNS]
        for drop in ("AGENT", "MODEL"):
            if width - (sum(widths) + len(COLUMNS) - 1) >= MIN_TASK:
                break
            widths[[n for n, _ in COLUMNS].index(drop)] = 0
        used = sum(widths) + sum(1 for w in widths if w) - 1
        widths[3] = max(width - used - 1, 4)
        return widths

    def header(self, width: int) -> Text:
        arrow = "▼" if not self.reverse else "▲"
        names = []
        for name, _ in COLUMNS:
            label = name
            if name.lower() == self.sort_key:
                label = f"{name}{arrow}"
            names.append(label)
        widths = self._widths(width)
        return Text(
            " ".join(
                (n.rjust(w) if n.rstrip("▼▲") in _RIGHT else fit(n, w))
                for n, w in zip(names, widths, strict=True)
                if w
            )
        )

    def row(self, key: str, width: int) -> Text:
        view = self._state().threads.get(key)
        if view is None:
            return Text("")
        w = self._widths(width)
        now = self._now()
        end = view.ended if view.ended is not None else now
        needs = needs_you(view)
        state_style = self.get_component_rich_style(f"threads--{view.state}")
        cells: list[tuple[str, object]] = [
            ("●" if needs else " ", self.get_component_rich_style("threads--needs")),
            (view.id, None),
            (view.agent, None),
            (view.title, None),
            (str(view.state), state_style),
            (
                view.model.removeprefix("sim/") if view.model.startswith("sim/") else view.model,
                None,
            ),
            (str(view.step), None),
            (tokens(view.tokens), None),
            (usd(view.cost_usd), None),
            (age(end - view.created), None),
        ]
        text = Text(no_wrap=True, overflow="crop")
        first = True
        for i, ((value, style), width_i) in enumerate(zip(cells, w, strict=True)):
            if not width_i:
                continue
            if not first:
                text.append(" ")
            first = False
            right = COLUMNS[i][0] in _RIGHT
            cell = value[:width_i].rjust(width_i) if right else fit(value, width_i)
            text.append(cell, style=style)  # type: ignore[arg-type]
        if needs:
            text.stylize("bold")
        return text
