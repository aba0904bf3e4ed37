"""The inbox: everything that needs the human, oldest first (a tree of sub-agents' items
together), and the selected item in full."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import Static

from tower.core.events import InboxKind
from tower.core.situations import DIGEST_KEY, Situation, situations
from tower.core.state import InboxItem, TowerState, root_of
from tower.ui.format import age, fit, pretty_args, usd
from tower.ui.widgets.rowlist import Cells, StateList

KIND_LABEL = {
    InboxKind.APPROVAL: "approve?",
    InboxKind.QUESTION: "question",
    InboxKind.BUDGET: "budget",
    InboxKind.ESCALATION: "handoff",
}

KIND_W = 12  # "16× approve?"

# What each key does on each kind of item, shown under the item.
KEY_HINTS = {
    InboxKind.APPROVAL: "a approve · d deny · E edit args, then approve · r approve with comment"
    " · A allow like this for a while",
    InboxKind.QUESTION: "r reply · d refuse to answer",
    InboxKind.BUDGET: "a raise by the suggested amount · b raise by… · d decline (thread fails)",
    InboxKind.ESCALATION: "r reply with guidance · a let it continue · d stop the thread",
}


def summary_of(item: InboxItem) -> str:
    d = item.data
    if item.kind is InboxKind.APPROVAL:
        args = d.get("args") or {}
        target = args.get("path") or next((str(v) for v in args.values()), "")
        return f"{d.get('tool')} {target}".strip()
    if item.kind is InboxKind.QUESTION:
        return str(d.get("question", ""))
    return str(d.get("reason", ""))


def by_tree(state: TowerState, sits: list[Situation]) -> list[Situation]:
    """Situations of one tree (a thread and its sub-agents) next to each other: trees are
    placed by their oldest situation, oldest first within a tree. Situations of threads
    outside trees, or of threads of several trees, keep their place (oldest first); the
    digest stays last. `sits` comes oldest first."""
    threads = state.threads
    placed: list[list[Situation]] = []
    trees: dict[str, list[Situation]] = {}
    for sit in sits:
        roots: set[str | None] = set()
        for tid in sit.threads:
            view = threads.get(tid)
            if view is None or (view.parent is None and not view.children):
                roots.add(None)  # a thread outside any tree
            else:
                roots.add(root_of(state, tid))
        root = roots.pop() if len(roots) == 1 else None
        if root is None or sit.key == DIGEST_KEY:
            placed.append([sit])
        elif root in trees:
            trees[root].append(sit)
        else:
            trees[root] = [sit]
            placed.append(trees[root])
    return [s for group in placed for s in group]


def counts_title(state: TowerState) -> str:
    counts = Counter(item.kind for item in state.inbox.values())
    if not counts:
        return "Inbox · nothing needs you"
    parts = [f"{n} {KIND_LABEL[k]}" for k, n in counts.most_common()]
    return f"Inbox {len(state.inbox)} · " + " · ".join(parts)


class InboxList(StateList):
    """The inbox as situations: one row per cause, oldest first; groups expand in place.

    Rows are keyed by item id (a single item, or a member of an expanded group) or by a
    situation key ("g:…"). `space` marks rows; verbs then act on the marked set.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "mark", "Mark", show=False),
        Binding("right", "expand(True)", "Expand", show=False),
        Binding("left", "expand(False)", "Collapse", show=False),
    ]
    COMPONENT_CLASSES: ClassVar[set[str]] = StateList.COMPONENT_CLASSES | {
        *(f"inbox--{k}" for k in InboxKind),
        "inbox--marked",
        "inbox--group",
        "inbox--detached",
    }
    DEFAULT_CSS = """
    InboxList > .inbox--approval { color: $warning; }
    InboxList > .inbox--question { color: $accent; }
    InboxList > .inbox--budget { color: $error; }
    InboxList > .inbox--escalation { color: $secondary; }
    InboxList > .inbox--failure { color: $error; }
    InboxList > .inbox--marked { color: $success; text-style: bold; }
    InboxList > .inbox--group { text-style: bold; }
    InboxList > .inbox--detached { background: $surface; }
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
        self.by_key: dict[str, Situation] = {}  # situation key → situation
        self.member_of: dict[str, Situation] = {}  # item id → its situation
        self.expanded: set[str] = set()
        self.marked: set[str] = set()  # item ids
        self._auto_opened: str | None = None  # a group opened to show a selected thread's item
        self.human_minutes_cap: float | None = None
        self.routine_usd = 0.01

    def rebuild(self) -> None:
        """Situations oldest first, those of one tree of sub-agents together (the digest
        last); an expanded group lists its items."""
        with self._lock():  # a key (expand, mark) rebuilds outside the app's tick too
            state = self._state()
            sits = by_tree(
                state,
                situations(
                    state,
                    human_minutes_cap=self.human_minutes_cap,
                    routine_usd=self.routine_usd,
                ),
            )
        self.by_key = {s.key: s for s in sits}
        self.member_of = {i: s for s in sits for i in s.items}
        self.marked &= set(self.member_of)  # decided items are no longer marked
        self.expanded &= set(self.by_key)
        rows: list[str] = []
        for sit in sits:
            rows.append(sit.key)
            if sit.key in self.expanded:
                rows.extend(sit.items)
        self.set_rows(rows)

    def situation_of(self, key: str | None) -> Situation | None:
        """The situation a row stands for: a group, or a single item's own situation."""
        if key is None:
            return None
        found = self.by_key.get(key)
        if found is not None:
            return found
        owner = self.member_of.get(key)
        if owner is None:
            return None
        if owner.key == key:
            return owner
        return Situation(key, owner.kind, "", (key,), (), 0.0)  # a member row: that item

    def row_for_thread(self, thread: str) -> str | None:
        """The row of the thread's oldest item; a collapsed group holding it is expanded, so
        the row under the cursor is that very item (the thread's, not the group's)."""
        with self._lock():
            inbox = self._state().inbox
            created = {
                i: it.created
                for i in self.member_of
                if (it := inbox.get(i)) is not None and it.thread == thread
            }
        if not created:
            return None
        oldest = min(created, key=lambda i: (created[i], i))
        owner = self.member_of[oldest]
        if self._auto_opened not in (None, owner.key):
            # The group opened for the previous thread closes again when the selection leaves.
            self.expanded.discard(self._auto_opened)
            self._auto_opened = None
            self.rebuild()
        if oldest not in self.rows:
            self.expanded.add(owner.key)
            self._auto_opened = owner.key
            self.rebuild()
        return oldest if oldest in self.rows else None

    def action_mark(self) -> None:
        sit = self.situation_of(self.current)
        if sit is None:
            return
        items = set(sit.items)
        if items <= self.marked:
            self.marked -= items
        else:
            self.marked |= items
        self.detached = False
        self.refresh()
        self._last_key = None  # the marks changed what the row stands for: announce again
        self._announce()
        self.action_cursor(1)

    def action_expand(self, open_: bool) -> None:
        key = self.current
        if key is None:
            return
        group = self.by_key.get(key) if key in self.by_key else self.member_of.get(key)
        if group is None or not group.is_group:
            return
        self._auto_opened = None  # the person chose: it stays as they left it
        if open_:
            self.expanded.add(group.key)
        else:
            self.expanded.discard(group.key)
        self.rebuild()
        self.select_key(group.key)

    @staticmethod
    def _widths(width: int) -> tuple[int, int]:
        """THREAD and WHAT widths: the thread name gives way on narrow screens."""
        thread = min(16, max(6, width // 5))
        return thread, max(width - 2 - KIND_W - thread - 6 - 4, 4)  # AGE always keeps its place

    def header(self, width: int) -> Cells:
        thread, rest = self._widths(width)
        cells = [
            "  " + fit("KIND", KIND_W),
            fit("THREAD", thread),
            fit("WHAT", rest),
            "AGE".rjust(6),
        ]
        return [(" ".join(cells), None)]

    def row(self, key: str, width: int) -> Cells:
        thread_w, rest = self._widths(width)
        state = self._state()
        sit = self.by_key.get(key)
        if sit is not None and sit.is_group:
            opened = key in self.expanded
            marked = set(sit.items) <= self.marked
            lead = ("✓" if marked else "▾" if opened else "▸") + " "
            label = f"{len(sit.items)}× {KIND_LABEL[sit.kind]}"
            threads = f"{len(sit.threads)} threads" if len(sit.threads) > 1 else sit.threads[0]
            style = self.style_of("inbox--marked") if marked else self.style_of("inbox--group")
            return [
                (lead, style),
                (fit(label, KIND_W), self.style_of(f"inbox--{sit.kind}") + style),
                (" " + fit(threads, thread_w) + " " + fit(sit.row_text, rest) + " ", style),
                (age(self._now() - sit.created).rjust(6), None),
            ]
        item = state.inbox.get(key)
        if item is None:
            return []
        member = self.member_of.get(key)
        nested = member is not None and member.is_group
        marked = key in self.marked
        lead = "✓ " if marked else ("  " if not nested else " ·")
        item_style = self.style_of("inbox--marked") if marked else None
        return [
            (lead, item_style),
            (fit(KIND_LABEL[item.kind], KIND_W), self.style_of(f"inbox--{item.kind}")),
            (
                " " + fit(item.thread, thread_w) + " " + fit(summary_of(item), rest) + " ",
                item_style,
            ),
            (age(self._now() - item.created).rjust(6), None),
        ]

    @property
    def detached(self) -> bool:
        """True when the selected thread has nothing waiting: no inbox row is the target."""
        return self.cursor_hidden

    @detached.setter
    def detached(self, value: bool) -> None:
        if value != self.cursor_hidden:
            self.cursor_hidden = value
            self.refresh()


class InboxDetail(Static):
    """The selected item in full: arguments pretty-printed, reason, cost so far, age, keys."""

    DEFAULT_CSS = """
    InboxDetail { padding: 0 1; height: 1fr; overflow: hidden; }
    """

    def show_text(self, text: Text) -> None:
        self.update(text, layout=False)

    def show_situation(self, sit: Situation, state: TowerState, now: float, hint: str) -> None:
        """A group: its cause, what resolving it costs, the threads it holds, the keys."""
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("situation", Text(sit.cause))
        grid.add_row(
            "items",
            f"{len(sit.items)} ({' '.join(sit.items[:12])}{' …' if len(sit.items) > 12 else ''})",
        )
        if sit.resolve:
            grid.add_row("resolve", Text(sit.resolve))
        grid.add_row("waiting", f"oldest {age(now - sit.created)}")
        parts: list[RenderableType] = [grid, Text("threads", style="bold")]
        for iid in sit.items[:20]:
            item = state.inbox.get(iid)
            if item is not None:
                line = Text(f"  {iid:<5} {item.thread}  ", no_wrap=True, overflow="ellipsis")
                line.append(summary_of(item), style="dim")
                parts.append(line)
        if len(sit.items) > 20:
            parts.append(Text(f"  … and {len(sit.items) - 20} more (→ opens the group)"))
        parts.append(Text(hint, style="dim italic"))
        self.update(Group(*parts), layout=False)

    def show(
        self, item: InboxItem | None, now: float, agent: str = "", hint: str | None = None
    ) -> None:
        if item is None:
            self.update(Text("Select an item to see it in full.", style="dim"), layout=False)
            return
        d = item.data
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        grid.add_row("thread", f"{item.thread} ({agent})" if agent else item.thread)
        grid.add_row("kind", KIND_LABEL[item.kind])
        if item.kind is InboxKind.APPROVAL:
            grid.add_row("tool", str(d.get("tool")))
        if item.kind is InboxKind.QUESTION:
            grid.add_row("question", Text(str(d.get("question", ""))))
        if d.get("reason"):
            grid.add_row("reason", Text(str(d["reason"])))
        if d.get("policy_rule"):
            grid.add_row("asks by", Text(str(d["policy_rule"])))
        if item.kind is InboxKind.ESCALATION and "est_human_minutes" in d:
            nxt, est = d.get("next_model"), d.get("est_escalation_usd")
            if nxt is None:
                grid.add_row("escalate", Text("no stronger model left", style="dim"))
            else:
                cost = usd(est) if est is not None else "price unknown"
                grid.add_row("escalate", f"≈ {cost} to move to {nxt}")
            grid.add_row("you", f"≈ {float(d['est_human_minutes']):.1f} min of your attention")
        grid.add_row("cost so far", usd(d.get("cost_so_far", 0.0)))
        grid.add_row("waiting", age(now - item.created))
        parts: list[RenderableType] = [grid]
        if item.kind is InboxKind.APPROVAL:
            args = d.get("args", {})
            diff = str(d.get("diff") or "")
            if diff and isinstance(args, dict):
                # The other arguments as rows; the content is the diff, not escaped JSON.
                for name, value in args.items():
                    if name != "content":
                        shown = value if isinstance(value, str) else pretty_args(value)
                        grid.add_row(name, Text(shown))
            else:
                parts.append(Text("arguments", style="bold"))
                parts.append(Text(pretty_args(args)))
            if d.get("diff_note"):
                parts.append(Text(str(d["diff_note"]), style="dim italic"))
            if diff:
                from tower.ui.widgets.diffview import diff_view

                lines = diff.split("\n")
                if lines[0].startswith("--- ") and lines[1:2] and lines[1].startswith("+++ "):
                    lines = lines[2:]  # the path is a row above
                # As many lines as leave the keys below in sight (long lines are cut): the
                # rows above and the hint below are measured as they will wrap.
                width = max(self.content_size.width, 20)
                console = self.app.console
                options = console.options.update(width=width)
                above = sum(len(console.render_lines(p, options)) for p in parts)
                below = len(console.render_lines(Text(hint or KEY_HINTS[item.kind]), options))
                room = max(self.content_size.height - above - below - 1, 3)
                if self.size.height and len(lines) > room:
                    keep = room - 1
                    key_of = getattr(self.app, "key_of", None)  # the live app has a files view
                    where = f" · {key_of('files')}: files view" if key_of else ""
                    lines = [*lines[:keep], f"… {len(lines) - keep} more lines{where}"]
                parts.append(diff_view("\n".join(lines), self.app.current_theme, wrap=False))
        if item.kind is InboxKind.ESCALATION and d.get("last_output"):
            parts.append(Text("last output", style="bold"))
            parts.append(Text(str(d["last_output"])[-400:]))
        parts.append(Text(hint or KEY_HINTS[item.kind], style="dim italic"))
        self.update(Group(*parts), layout=False)
