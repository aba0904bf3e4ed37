"""The thread list: every thread one row, sortable and filterable, needs-you rows marked.

Sub-agents make trees: unfiltered, the roots are sorted and each is followed by its
descendants (children in spawn order), indented with tree glyphs in the ID cell; a parent
can be collapsed (its row says how many threads it hides) and its COST cell is its whole
subtree's. With a filter, the matches are a flat list, as without trees.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

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


def awaits(view: ThreadView, state: TowerState) -> int | None:
    """How many live children a parent blocked in wait_agents waits on (None otherwise)."""
    if view.state is not ThreadState.RUNNING or not view.children:
        return None
    if not view.reason.startswith("waiting on "):
        return None
    threads = state.threads
    return sum(1 for c in view.children if c in threads and not threads[c].state.ended)


def matches(view: ThreadView, needle: str) -> bool:
    hay = f"{view.id} {view.agent} {view.title} {view.state} {view.model} {view.reason}".lower()
    return all(part in hay for part in needle.lower().split())


class ThreadList(StateList):
    # Collapse and expand a tree (htop, ranger). Replay's list has none: left and right
    # step through the events there.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left,minus", "fold(True)", "Collapse", show=False),
        Binding("right,plus", "fold(False)", "Expand", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = StateList.COMPONENT_CLASSES | {
        *(f"threads--{s}" for s in ThreadState),
        "threads--needs",
        "threads--awaits",
        "threads--tree",
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
    ThreadList > .threads--awaits { color: $success; text-style: italic; }
    ThreadList > .threads--tree { color: $text-muted; }
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
        self.collapsed: set[str] = set()  # parents whose descendants are hidden
        # Drawn by `row`, computed by `rebuild` (one walk): a tree row's glyphs ("│ ├ "),
        # and how many threads each collapsed row hides.
        self.glyphs: dict[str, str] = {}
        self.hidden: dict[str, int] = {}
        self.as_tree = False  # drawn as a tree (else flat: no trees, or a filter)

    def rebuild(self) -> None:
        """Recomputes which threads show, in which order, from the current state: O(n)."""
        with self._lock():  # re-entrant: the tick holds it already; no caller can forget it
            threads = self._state().threads
            views = list(threads.values())
            tree = not self.filter_text and any(v.parent is not None for v in views)
            if self.filter_text:
                views = [v for v in views if matches(v, self.filter_text)]
            elif tree:
                views = [v for v in views if v.parent is None or v.parent not in threads]
            key = self.sort_key
            if key == "id":
                views.sort(key=lambda v: v.id)
            elif key == "state":
                views.sort(key=lambda v: (_STATE_RANK[v.state], -v.pending))
            elif key == "cost":
                views.sort(key=lambda v: -(v.subtree_usd if tree else v.cost_usd))
            elif key == "tokens":
                views.sort(key=lambda v: -(v.subtree_tokens if tree else v.tokens))
            elif key == "age":
                views.sort(key=lambda v: v.created)
            elif key == "model":
                views.sort(key=lambda v: v.model)
            if self.reverse:
                views.reverse()
            self.as_tree = tree
            if tree:
                keys = self._walk(views, threads)
            else:
                keys = [v.id for v in views]
                self.glyphs, self.hidden = {}, {}
        self.set_rows(keys)

    def _walk(self, roots: list[ThreadView], threads: dict[str, ThreadView]) -> list[str]:
        """Each root, then its descendants depth first in spawn order, but not below a
        collapsed row (whose hidden threads are counted): each thread is visited once."""
        keys: list[str] = []
        glyphs: dict[str, str] = {}
        hidden: dict[str, int] = {}
        collapsed = self.collapsed
        # (thread, the glyphs of the levels above it, its own branch glyph)
        stack: list[tuple[str, str, str]] = [(v.id, "", "") for v in reversed(roots)]
        while stack:
            tid, above, branch = stack.pop()
            view = threads.get(tid)
            if view is None:
                continue
            keys.append(tid)
            if branch:
                glyphs[tid] = above + branch
            kids = view.children
            if not kids:
                continue
            if tid in collapsed:
                hidden[tid] = _count_below(view, threads)
                continue
            # A child's own branch; the levels below it continue its line unless it is last.
            inner = above + ("│ " if branch == "├ " else "  " if branch else "")
            last = len(kids) - 1
            for i in range(last, -1, -1):
                stack.append((kids[i], inner, "└ " if i == last else "├ "))
        self.glyphs, self.hidden = glyphs, hidden
        return keys

    def reveal(self, tid: str) -> bool:
        """Expands the collapsed ancestors hiding a thread; whether any was."""
        threads = self._state().threads
        view = threads.get(tid)
        opened = False
        while view is not None and view.parent is not None:
            if view.parent in self.collapsed:
                self.collapsed.discard(view.parent)
                opened = True
            view = threads.get(view.parent)
        return opened

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "fold":  # a flat list (a filter) has nothing to fold
            return not self.filter_text
        return True

    def action_fold(self, collapse: bool) -> None:
        """Collapses (or expands) the row under the cursor; collapsing a row that has no
        children open collapses its parent and moves there."""
        key = self.current
        if key is None:
            return
        with self._lock():
            view = self._state().threads.get(key)
            if view is None:
                return
            if not collapse:
                if key not in self.collapsed:
                    return
                self.collapsed.discard(key)
            elif view.children and key not in self.collapsed:
                self.collapsed.add(key)
            elif view.parent is not None:
                key = view.parent
                self.collapsed.add(key)
            else:
                return
            self.rebuild()
        self.select_key(key)

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
        state = self._state()
        view = state.threads.get(key)
        if view is None:
            return []
        w = self._widths(width)
        end = view.ended if view.ended is not None else self._now()
        needs = needs_you(view)
        bold = self.style_of("threads--needs") if needs else None
        model = view.model[4:] if view.model.startswith("sim/") else view.model
        ident, title, status = view.id, view.title, str(view.state)
        if view.batch_since is not None and view.state is ThreadState.WAITING:
            status = f"batch {age(self._now() - view.batch_since)}"  # waits on its batch
        elif view.state is ThreadState.QUEUED and view.reason.startswith("lane opens at "):
            status = f"at {view.reason.removeprefix('lane opens at ')}"  # its lane's window
        cost = "no price" if view.unpriced and not view.cost_usd else usd(view.cost_usd)
        glyphs = self.glyphs.get(key, "")
        state_style = f"threads--{view.state}"
        if view.children:  # a parent: its fold marker (in the tree); its subtree's spend
            if self.as_tree:
                folded = key in self.hidden
                ident = ("▸ " if folded else "▾ ") + ident
                if folded:
                    title = f"[+{self.hidden[key]}] {title}"
            total = usd(view.subtree_usd)
            cost = f"Σ{total}" if len(total) < 9 else f"Σ{total[1:]}"
            waits = awaits(view, state)
            if waits is not None:
                status = f"awaits {waits}" if waits < 10 else f"await {waits}"
                state_style = "threads--awaits"
        values = (
            "●" if needs else " ",
            glyphs + ident,
            view.agent,
            title,
            status,
            model,
            str(view.step),
            tokens(view.tokens),
            cost,
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
                style = self.style_of(state_style)
            if name == "ID" and glyphs and len(glyphs) < width_i:
                # The glyphs muted, the id as any other row's.
                out.append((cell[: len(glyphs)], self.style_of("threads--tree")))
                out.append((cell[len(glyphs) :] + " ", style))
                continue
            out.append((cell + " ", style))
        return out


def _count_below(view: ThreadView, threads: dict[str, ThreadView]) -> int:
    """How many descendants a thread has (what collapsing it hides)."""
    n = 0
    stack = list(view.children)
    while stack:
        child = threads.get(stack.pop())
        if child is not None:
            n += 1
            stack.extend(child.children)
    return n
