"""The inbox: everything that needs the human, oldest first, and the selected item in full."""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tower.core.events import InboxKind
from tower.core.state import InboxItem, TowerState
from tower.ui.format import age, fit, pretty_args, usd
from tower.ui.widgets.rowlist import Cells, StateList

KIND_LABEL = {
    InboxKind.APPROVAL: "approve?",
    InboxKind.QUESTION: "question",
    InboxKind.BUDGET: "budget",
    InboxKind.ESCALATION: "handoff",
    InboxKind.FAILURE: "failure",
}

# What each key does on each kind of item, shown under the item.
KEY_HINTS = {
    InboxKind.APPROVAL: "a approve · d deny · E edit args, then approve · r approve with comment"
    " · A allow like this for a while",
    InboxKind.QUESTION: "r reply · d refuse to answer",
    InboxKind.BUDGET: "a raise by the suggested amount · b raise by… · d decline (thread fails)",
    InboxKind.ESCALATION: "r reply with guidance · a let it continue · d stop the thread",
    InboxKind.FAILURE: "d dismiss",
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


def counts_title(state: TowerState) -> str:
    counts = Counter(item.kind for item in state.inbox.values())
    if not counts:
        return "Inbox · nothing needs you"
    parts = [f"{n} {KIND_LABEL[k]}" for k, n in counts.most_common()]
    return f"Inbox {len(state.inbox)} · " + " · ".join(parts)


class InboxList(StateList):
    COMPONENT_CLASSES: ClassVar[set[str]] = StateList.COMPONENT_CLASSES | {
        *(f"inbox--{k}" for k in InboxKind)
    }
    DEFAULT_CSS = """
    InboxList > .inbox--approval { color: $warning; }
    InboxList > .inbox--question { color: $accent; }
    InboxList > .inbox--budget { color: $error; }
    InboxList > .inbox--escalation { color: $secondary; }
    InboxList > .inbox--failure { color: $error; }
    """

    def rebuild(self) -> None:
        """Oldest first; items of the same instant in thread order, so the list is stable."""
        items = sorted(self._state().inbox.values(), key=lambda i: (i.created, i.thread, i.id))
        self.set_rows([i.id for i in items])

    @staticmethod
    def _widths(width: int) -> tuple[int, int]:
        """THREAD and WHAT widths: the thread name gives way on narrow screens."""
        thread = min(16, max(8, width // 5))
        return thread, max(width - 9 - thread - 6 - 3, 8)

    def header(self, width: int) -> Cells:
        thread, rest = self._widths(width)
        cells = [fit("KIND", 9), fit("THREAD", thread), fit("WHAT", rest), "AGE".rjust(6)]
        return [(" ".join(cells), None)]

    def row(self, key: str, width: int) -> Cells:
        item = self._state().inbox.get(key)
        if item is None:
            return []
        thread, rest = self._widths(width)
        return [
            (fit(KIND_LABEL[item.kind], 9), self.style_of(f"inbox--{item.kind}")),
            (" " + fit(item.thread, thread) + " " + fit(summary_of(item), rest) + " ", None),
            (age(self._now() - item.created).rjust(6), None),
        ]


class InboxDetail(Static):
    """The selected item in full: arguments pretty-printed, reason, cost so far, age, keys."""

    DEFAULT_CSS = """
    InboxDetail { padding: 0 1; height: 1fr; overflow: hidden; }
    """

    def show(self, item: InboxItem | None, now: float, agent: str = "") -> None:
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
        parts: list[object] = [grid]
        if item.kind is InboxKind.APPROVAL:
            parts.append(Text("arguments", style="bold"))
            parts.append(Text(pretty_args(d.get("args", {}))))
        if item.kind is InboxKind.ESCALATION and d.get("last_output"):
            parts.append(Text("last output", style="bold"))
            parts.append(Text(str(d["last_output"])[-400:]))
        parts.append(Text(KEY_HINTS[item.kind], style="dim italic"))
        self.update(Group(*parts), layout=False)  # type: ignore[arg-type]
