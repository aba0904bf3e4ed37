"""The one selection: what the next verb acts on, named in a line above the footer.

The inbox detail pane and this bar draw the same `Target`, and the verbs act on the target
that was last drawn, never on one recomputed at key time. So what the person reads is what
the key does, even while items arrive and leave between two frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from tower.core.events import InboxKind
from tower.core.situations import Situation
from tower.core.state import InboxItem
from tower.ui.format import usd


@dataclass(frozen=True, slots=True)
class Target:
    """The items a verb will act on, as the screen shows them."""

    items: tuple[str, ...]
    kind: InboxKind | None  # None when a marked set mixes kinds
    label: str  # "i3 · review-stock · write_file inventory/stock.py"
    situation: Situation | None = None  # the group (or a priced single budget item)
    marked: bool = False
    thread: str | None = None  # the single item's thread

    @property
    def single(self) -> str | None:
        return self.items[0] if len(self.items) == 1 else None


def target_label(item: InboxItem, summary: str, limit: int = 60) -> str:
    """ "i3 · review-stock · write_file inventory/stock.py": short enough that the keys after
    it stay on the line (a question's whole text is in the detail pane)."""
    summary = " ".join(summary.split())
    if len(summary) > limit:
        summary = summary[: limit - 1] + "…"
    return f"{item.id} · {item.thread} · {summary}".rstrip(" ·")


def budget_amount(target: Target, item: InboxItem | None) -> float:
    """The raise `a` makes on a budget target: the situation's, else the item's suggestion."""
    if target.situation is not None and target.situation.suggest_usd is not None:
        return target.situation.suggest_usd
    return float(item.data.get("suggest_usd") or 0.0) if item is not None else 0.0


def hints_for(
    target: Target | None,
    key: Callable[[str], str],
    amount: float = 0.0,
    ended: bool = False,
    tree: bool = False,
) -> str:
    """The keys that act on this target, in the user's own key names. With no target, the
    thread's own verbs (only those that still apply to an ended thread); with `tree` (the
    thread has sub-agents), the verbs on its whole subtree too."""
    if target is None and ended:
        return f"enter open · {key('files')} files it wrote · {key('next_item')} next item"
    if target is None:
        subtree = (
            f"{key('pause_tree')} pause tree · {key('kill_tree')} kill tree · "
            f"{key('escalate_tree')} escalate tree · "
            if tree
            else ""
        )
        return (
            f"{key('pause')} pause · {key('kill')} kill · {key('escalate')} escalate · "
            f"{subtree}{key('reply')} comment · enter open · {key('next_item')} next item"
        )
    many = "all" if len(target.items) > 1 else ""
    if target.marked and target.kind is None:
        return (
            f"{key('approve')} approve/raise/continue the marked · {key('deny')} deny the marked"
            " · space unmark"
        )
    kind = target.kind
    if kind is InboxKind.APPROVAL:
        extra = f" · {key('edit')} edit args" if target.single else ""
        return (
            f"{key('approve')} approve {many}".rstrip()
            + f" · {key('deny')} deny {many}".rstrip()
            + f" · {key('deny_reason')} deny with a reason{extra}"
            + f" · {key('allow_like')} allow like this · {key('reply')} approve with comment"
        )
    if kind is InboxKind.QUESTION:
        return f"{key('reply')} reply · {key('deny')} refuse to answer"
    if kind is InboxKind.BUDGET:
        scope = (
            "the session budget"
            if target.situation is not None and "session" in target.situation.cause
            else "the budget"
        )
        return (
            f"{key('approve')} raise {scope} by {usd(amount, 2)} · "
            f"{key('raise_budget')} raise by… · {key('deny')} decline {many}".rstrip()
        )
    if kind is InboxKind.ESCALATION:
        return (
            f"{key('reply')} reply with guidance · {key('approve')} let it continue · "
            f"{key('deny')} stop the thread"
        )
    return f"{key('deny')} dismiss"


class SelectionBar(Static):
    """One line: ▶ the target, then the keys that act on it."""

    DEFAULT_CSS = """
    SelectionBar {
        height: 1; padding: 0 1; background: $boost; color: $text;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    """

    def show(self, target: Target | None, thread: str | None, hints: str) -> None:
        text = Text(no_wrap=True, overflow="ellipsis")
        if target is None:
            text.append("▶ ", style="bold")
            text.append(f"{thread}" if thread else "no thread selected", style="bold")
            text.append(" (nothing waiting)  " if thread else "  ", style="dim")
        else:
            text.append("▶ ", style="bold")
            text.append(target.label, style="bold reverse")
            text.append("  ")
        text.append(hints, style="dim" if target is None else "")
        self.update(text, layout=False)
