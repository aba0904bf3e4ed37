"""The thread list: every thread one row, sortable and filterable, needs-you rows marked."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from tower.core.events import ThreadState
from tower.core.state import ThreadView, TowerState
from tower.ui.format import age, fit, tokens, usd
from tower.ui.widgets.rowlist import Cells, StateList

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
    ThreadState.SKIPPED: 7,
}


def needs_you(view: ThreadView) -> bool:
    return view.pending > 0


def matches(view: ThreadView, needle: str) -> bool:
    hay = f"{view.id} {view.agent} {view.title} {view.state} {view.model} {view.reason}".lower()
    return all(part in hay for part in needle.lower().split())


class ThreadList(StateList):
    COMPONENT_CLASSES: ClassVar[set[str]] = StateList.COMPONENT_CLASSES | {
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
    ThreadList > .threads--skipped { color: $text-muted; text-style: italic; }
    ThreadList > .threads--needs { color: $warning; text-style: bold; }
    """

    def __init__(
        self,
        state: Callable[[], TowerState],
        now: Callable[[], float],
        *,
        id: str | None = None,
        lock: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        super().__init__(state, now, id=id, lock=lock)
        self.filter_text = ""
        self.sort_key = "spawned"
        self.reverse = False

    def rebuild(self) -> None:
        """Recomputes which threads show, in which order, from the current state."""
        with self._lock():  # re-entrant: the tick holds it already; no caller can forget it
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
            keys = [v.id for v in views]
        self.set_rows(keys)

    def _widths(self, width: int) -> list[int]:
        """Column widths for this width; AGENT, MODEL, STEP and TOKENS give way (in that order)
        before TASK gets too thin, so STATE, COST and AGE always show."""
        widths = [w or 0 for _, w in COLUMNS]
        for drop in ("AGENT", "MODEL", "STEP", "TOKENS"):
            if width - (sum(widths) + len(COLUMNS) - 1) >= MIN_TASK:
                break
            widths[[n for n, _ in COLUMNS].index(drop)] = 0
        used = sum(widths) + sum(1 for w in widths if w) - 1
        widths[3] = max(width - used - 1, 4)
        return widths

    def header(self, width: int) -> Cells:
        arrow = "▼" if not self.reverse else "▲"
        out: Cells = []
        for (name, _), w in zip(COLUMNS, self._widths(width), strict=True):
            if not w:
                continue
            label = f"{name}{arrow}" if name.lower() == self.sort_key else name
            out.append(((label.rjust(w) if name in _RIGHT else fit(label, w)) + " ", None))
        return out

    def row(self, key: str, width: int) -> Cells:
        view = self._state().threads.get(key)
        if view is None:
            return []
        w = self._widths(width)
        end = view.ended if view.ended is not None else self._now()
        needs = needs_you(view)
        bold = self.style_of("threads--needs") if needs else None
        model = view.model[4:] if view.model.startswith("sim/") else view.model
        values = (
            "●" if needs else " ",
            view.id,
            view.agent,
            view.title,
            str(view.state),
            model,
            str(view.step),
            tokens(view.tokens),
            "no price" if view.unpriced and not view.cost_usd else usd(view.cost_usd),
            age(end - view.created),
        )
        out: Cells = []
        for i, (value, width_i) in enumerate(zip(values, w, strict=True)):
            if not width_i:
                continue
            name = COLUMNS[i][0]
            cell = value[:width_i].rjust(width_i) if name in _RIGHT else fit(value, width_i)
            style = None
            if i == 0 or (needs and name == "ID"):
                style = bold
            elif name == "STATE":
                style = self.style_of(f"threads--{view.state}")
            out.append((cell + " ", style))
        return out
