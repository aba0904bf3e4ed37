"""The inbox: items a live thread waits on, and the decisions that close them.

An item is opened by a thread (approval, question, budget, escalation), recorded
(INBOX_OPENED), and waited on through a future; a decision (the person's, a grant's, or a
headless run's `--approve` rule) closes it (INBOX_CLOSED) and wakes the thread. Which
decision fits which kind of item is decided here, so every view (TUI, CLI, a script) gets
the same answer for the same key.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import Event, EventKind, InboxKind, Resolution
from tower.core.run import CommandError, Decision, ThreadRun


class Inbox:
    def __init__(self, bus: Bus, runs: dict[str, ThreadRun]) -> None:
        self.bus = bus
        self.runs = runs  # the supervisor's: items belong to live threads
        self._ids = itertools.count(1)
        self._owner: dict[str, str] = {}

    def open(
        self, th: ThreadRun, kind: InboxKind, **data: Any
    ) -> tuple[str, asyncio.Future[Decision]]:
        """Records a new item of `th` (its kind's own fields in `data`) and returns the
        future its decision resolves."""
        item = f"i{next(self._ids)}"
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        th.items[item] = (kind, fut)
        self._owner[item] = th.id
        cost = round(self.bus.state.threads[th.id].cost_usd, 6)
        self.bus.emit(pl.InboxOpened.of(item=item, kind=str(kind), cost_so_far=cost, **data), th.id)
        return item, fut

    def knows(self, item: str) -> bool:
        """An item id this session opened (open or not): a target that is not a thread."""
        return item in self._owner

    def is_open(self, item: str) -> bool:
        tid = self._owner.get(item)
        return tid is not None and item in self.runs[tid].items

    def owner(self, item: str) -> tuple[ThreadRun, InboxKind, asyncio.Future[Decision]]:
        if not self.is_open(item):
            raise CommandError(f"no open inbox item {item!r}")
        th = self.runs[self._owner[item]]
        kind, fut = th.items[item]
        return th, kind, fut

    def decide(self, item: str, decision: Decision) -> None:
        """Closes an open item with `decision` (recorded) and wakes its thread."""
        th, _kind, fut = self.owner(item)
        del th.items[item]
        opened = self.bus.state.inbox.get(item)
        self.bus.emit(
            pl.InboxClosed(
                item=item,
                resolution=str(decision.resolution),
                by=decision.by,
                waited_s=round(self.bus.now() - opened.created, 3) if opened else None,
                text=decision.text,
                args=decision.args,
                attention_s=round(max(decision.attention_s, 0.0), 3)
                if decision.attention_s is not None
                else None,
                batch=decision.batch,
            ),
            th.id,
        )
        if not fut.done():
            fut.set_result(decision)

    def approve(
        self,
        item: str,
        args: dict[str, Any] | None = None,
        comment: str | None = None,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        _th, kind, _ = self.owner(item)
        if kind is InboxKind.BUDGET:
            raise CommandError(f"{item} asks for budget: raise it or decline")
        if kind is InboxKind.QUESTION:
            raise CommandError(f"{item} is a question: reply to it")
        self.decide(item, Decision(Resolution.APPROVED, by, comment, args, attention_s, batch))

    def deny(
        self,
        item: str,
        comment: str | None = None,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        _th, kind, _ = self.owner(item)
        resolution = Resolution.DECLINED if kind is InboxKind.BUDGET else Resolution.DENIED
        self.decide(item, Decision(resolution, by, comment, None, attention_s, batch))

    def answer(
        self,
        item: str,
        text: str,
        by: str = "human",
        attention_s: float | None = None,
        batch: str | None = None,
    ) -> None:
        """A reply on an item: answers a question or escalation; on an approval, approves
        it with the text attached as the person's comment."""
        _th, kind, _ = self.owner(item)
        if kind in (InboxKind.QUESTION, InboxKind.ESCALATION):
            resolution = Resolution.ANSWERED
        else:
            resolution = Resolution.APPROVED
        self.decide(item, Decision(resolution, by, text, None, attention_s, batch))

    def waiting(self, kind: InboxKind) -> Iterator[tuple[ThreadRun, str]]:
        """Open items of a kind, thread by thread (a snapshot: deciding one is safe)."""
        for th in list(self.runs.values()):
            for item, (k, _fut) in list(th.items.items()):
                if k is kind:
                    yield th, item

    def drop(self, th: ThreadRun) -> None:
        """Its thread ended: its open items close as dropped and nobody waits on them."""
        for item, (_kind, fut) in list(th.items.items()):
            self.bus.emit(
                pl.InboxClosed(item=item, resolution=str(Resolution.DROPPED), by="tower"), th.id
            )
            if not fut.done():
                fut.cancel()
        th.items.clear()

    def drop_recorded(self, tid: str) -> None:
        """A resumed thread's items from before the crash: nobody waits on them any more
        (the thread asks again if it still needs to)."""
        for item in [i for i in self.bus.state.inbox.values() if i.thread == tid]:
            self.bus.emit(
                pl.InboxClosed(item=item.id, resolution=str(Resolution.DROPPED), by="tower"), tid
            )

    def continue_numbering(self, last: int) -> None:
        """New items after a resume never reuse an id of the log (`last`: its highest)."""
        self._ids = itertools.count(last + 1)


class AutoDecider:
    """A headless run's decisions (`--approve all|none`): nobody is at the keyboard, so
    every item is decided as soon as it opens, by a rule named in the log."""

    def __init__(self, inbox: Inbox, bus: Bus, mode: str) -> None:
        self.inbox = inbox
        self.bus = bus
        self.mode = mode
        bus.subscribe(self._soon)

    def _soon(self, ev: Event) -> None:
        if ev.kind is EventKind.INBOX_OPENED:
            # After the event is handled: the thread is still setting its item up.
            item = pl.payload_as(ev, pl.InboxOpened).item
            asyncio.get_running_loop().call_soon(self.decide, item)

    def decide(self, item: str) -> None:
        if not self.inbox.is_open(item):
            return
        th, kind, _ = self.inbox.owner(item)
        rule = f"rule:--approve {self.mode}"
        yes = self.mode == "all"
        data = self.bus.state.inbox[item].data
        if kind is InboxKind.BUDGET:
            self.inbox.deny(item, "headless runs never raise a budget", by=rule)
        elif kind is InboxKind.QUESTION:
            if yes:
                answer = scripted_answer(th, data.get("question", ""))
                self.inbox.answer(item, answer, by=rule)
            else:
                self.inbox.deny(item, "the human declined to answer", by=rule)
        elif kind is InboxKind.ESCALATION:
            # Nobody is there to take over: the thread stops, named, instead of looping.
            reason = data.get("reason", "")
            self.inbox.deny(item, f"headless: no human to hand to ({reason})", by=rule)
        elif yes:
            self.inbox.approve(item, by=rule)
        else:
            self.inbox.deny(item, by=rule)


def scripted_answer(th: ThreadRun, question: str) -> str:
    """A headless answer to `ask_human`: the script's answer to this question, the task's
    default answer, else a note telling the model to go on with its best judgement."""
    for step in th.script or ():
        if (
            step.get("tool") == "ask_human"
            and step.get("args", {}).get("question") == question
            and step.get("answer") is not None
        ):
            return str(step["answer"])
    if th.default_answer is not None:
        return th.default_answer
    return "No answer is available; use your best judgement and say what you assumed."
