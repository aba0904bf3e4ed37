"""The budget bar along the top: money spent / reserved / limit, burn rate, time left,
tokens, human attention, and thread counts. Warning colour at 80 %, error at 100 %."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tower.core.control import CallFigures
from tower.core.events import ThreadState
from tower.core.progress import progress, rate_text
from tower.core.state import TowerState, root_of, subtree
from tower.ui.format import age, budget_level, duration_minutes, minutes_left, tokens, usd

BAR_WIDTH = 24


def bar(spent: float, reserved: float, limit: float | None, width: int = BAR_WIDTH) -> Text:
    text = Text()
    if not limit:
        text.append("─" * width, style="dim")
        return text
    s = min(round(spent / limit * width), width)
    r = min(round((spent + reserved) / limit * width), width) - s
    text.append("█" * s, style="bold")
    text.append("▒" * r)
    text.append("░" * (width - s - r), style="dim")
    return text


class BudgetBar(Static):
    DEFAULT_CSS = """
    BudgetBar {
        height: 2; padding: 0 1; background: $panel; color: $text;
        text-wrap: nowrap; text-overflow: ellipsis;
    }
    BudgetBar.-warning { background: $warning 35%; }
    BudgetBar.-error { background: $error 45%; }
    """

    def show(
        self,
        state: TowerState,
        burn_per_min: float,
        note: str = "",
        cap: float | None = None,
        now: float | None = None,
        gate: CallFigures | None = None,
        thread: str | None = None,
        ended_per_s: float = 0.0,
    ) -> None:
        """`cap`: the project's attention budget in minutes (`[budget] human_minutes`).
        `gate`: the call gate, when calls wait at it (tower is holding them back).
        `thread`: the selected thread; when it is in a tree (sub-agents), its tree's spend
        against the root's cap. `ended_per_s`: threads ended per second lately (the run's
        throughput, for its progress and ETA)."""
        b = state.budget
        level = budget_level(b.spent_usd, b.reserved_usd, b.limit_usd)
        self.set_class(level == "warning", "-warning")
        self.set_class(level == "error", "-error")
        line1 = Text(no_wrap=True, overflow="ellipsis")
        line1.append("tower ", style="bold")
        line1.append(f"{state.project or '…'} ", style="bold")
        line1.append_text(bar(b.spent_usd, b.reserved_usd, b.limit_usd))
        line1.append(f" {usd(b.spent_usd)} spent")
        if b.lost_usd:
            line1.append(f" (+{usd(b.lost_usd)} possibly billed: calls lost in a crash)")
        line1.append(f" · {usd(b.reserved_usd)} reserved")
        if b.limit_usd:
            pct = (b.spent_usd + b.reserved_usd) / b.limit_usd * 100
            line1.append(f" · limit {usd(b.limit_usd, 2)} ({pct:.0f}%)")
        else:
            line1.append(" · no limit")
        if thread is not None:
            line1.append_text(tree_segment(state, thread))
        if state.threads and state.all_ended:
            line1.append(" · every thread has ended")
        else:
            line1.append(f" · burn {usd(burn_per_min)}/min")
            if b.limit_usd:  # money left at this burn; with no limit, room for the ETA
                left = minutes_left(b.limit_usd, b.spent_usd, b.reserved_usd, burn_per_min)
                line1.append(f" · {duration_minutes(left)} left")
            line1.append_text(progress_segment(state, ended_per_s))
        line2 = Text(no_wrap=True, overflow="ellipsis")
        line2.append(f"tokens {tokens(b.tokens)}")
        if b.limit_tokens:
            line2.append(f"/{tokens(b.limit_tokens)}")
        if b.unpriced_tokens:
            line2.append(f" ({tokens(b.unpriced_tokens)} at unknown prices)", style="bold")
        if b.estimated_tokens:  # the provider sent no usage: tower's own count
            line2.append(f" (~{tokens(b.estimated_tokens)} counted by tower)")
        if b.saved_usd > 0:  # the providers' prompt caches read part of the prompts back
            line2.append(f" · saved {usd(b.saved_usd)} by caching")
        if b.cache_hits:  # calls answered from the response cache, at $0
            line2.append(
                f" · {b.cache_hits} cached answer(s), {usd(b.cache_saved_usd)} not paid again"
            )
        human = state.human_seconds / 60
        line2.append(f" · you {human:.1f} min on {state.decisions} decision(s)")
        if cap:
            line2.append(f" of {cap:g}", style="bold" if human >= cap else "")
        # Items still open are blocking threads right now: their wait counts as it grows.
        waiting = sum(max(now - i.created, 0.0) for i in state.inbox.values()) if now else 0.0
        line2.append(f" · blocked on you {(state.blocked_seconds + waiting) / 60:.1f} thread-min")
        counts = [
            (ThreadState.RUNNING, "running"),
            (ThreadState.WAITING, "waiting"),
            (ThreadState.PAUSED, "paused"),
            (ThreadState.QUEUED, "queued"),
            (ThreadState.DONE, "done"),
            (ThreadState.FAILED, "failed"),
            (ThreadState.KILLED, "killed"),
            (ThreadState.SKIPPED, "skipped"),
        ]
        tally = {s: 0 for s, _ in counts}
        for view in state.threads.values():
            tally[view.state] += 1
        line2.append(" · threads ")
        line2.append(
            " ".join(f"{n} {label}" for s, label in counts if (n := tally[s])) or "none yet"
        )
        if state.tasks_unstarted:  # a large project's copies, spawned as slots free
            line2.append(f" · {state.tasks_unstarted:,} tasks not started")
        if state.inbox:
            line2.append(f" · inbox {len(state.inbox)}", style="bold")
        if state.waiting_tasks:  # task graphs: not spawned until what they name has ended
            n = len(state.waiting_tasks)
            line2.append(f" · {n} task{'s' if n != 1 else ''} waiting on others")
        if gate is not None and gate.worker_slots:
            # Calls run in worker processes (fewer than asked: starting, or given up on).
            # Put first what fits at 160 columns: calls, workers, then what tower holds back.
            held = f", {gate.waiting:,} held back by tower" if gate.waiting else ""
            lag = f" (lag {gate.lag_s * 1000:.0f} ms)" if gate.waiting else ""
            line2.append(
                f" · calls: {gate.in_flight:,} in {gate.workers}/{gate.worker_slots} workers"
                f"{held}{lag}"
            )
        elif gate is not None and gate.waiting:
            # Running threads whose next call waits for tower itself, not for a provider.
            line2.append(
                f" · {gate.waiting:,} calls held back by tower, {gate.in_flight:,} in flight"
                f" (lag {gate.lag_s * 1000:.0f} ms)"
            )
        if note:
            line2.append(f" · {note}", style="italic")
        self.update(Text("\n").join([line1, line2]), layout=False)  # fixed height: no layout


def progress_segment(state: TowerState, per_s: float) -> Text:
    """' · tasks 5,199/10,000 ended · 93.4/s · ETA 51s' while a run of several tasks is
    under way: what an overnight run's person looks for first."""
    text = Text()
    p = progress(state, per_s)
    if p.total < 2 or p.left == 0:
        return text
    text.append(f" · tasks {p.ended:,}/{p.total:,} ended", style="bold")
    if p.per_s > 0:
        text.append(f" · {rate_text(p.per_s)}")
    text.append(f" · ETA {age(p.eta_s) if p.eta_s is not None else '—'}")
    return text


def tree_segment(state: TowerState, tid: str) -> Text:
    """' · tree lead $0.0040 of $0.0500 · 4 threads' for a thread with a parent or
    children (the root's subtree spend and cap: a root's cap bounds its whole tree);
    empty otherwise."""
    text = Text()
    view = state.threads.get(tid)
    if view is None or (view.parent is None and not view.children):
        return text
    root = state.threads.get(root_of(state, tid))
    if root is None:
        return text
    cap = root.budget_usd
    level = budget_level(root.subtree_usd, 0.0, cap)
    style = "bold" if level != "ok" else ""
    n = len(subtree(state, root.id))
    text.append(" · ")
    text.append(f"tree {root.id} {usd(root.subtree_usd)}", style=style)
    text.append(f" of {usd(cap)}" if cap else " of no cap", style=style)
    text.append(f" · {n} thread{'s' if n != 1 else ''}")
    return text
