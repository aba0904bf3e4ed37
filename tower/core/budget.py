"""Reserve → settle ledger for money and tokens, per thread and for the whole session.

Threads form trees (sub-agents): a thread's account holds its whole subtree's spending and
reservations, so a reservation is checked against the thread, every ancestor and the
session, and booked in all of them. A parent's cap therefore bounds its subtree: nothing a
descendant reserves can take any ancestor past its limit.

Every method is synchronous and does no I/O: on one asyncio loop a check-and-reserve can
never interleave with another, which is what makes "a cap is never overshot" hold even with
hundreds of calls in flight.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

INF = math.inf


@dataclass(slots=True)
class Account:
    """One capped pot. `limit_*` may be INF; spent + reserved never exceed the limit."""

    limit_usd: float = INF
    limit_tokens: float = INF
    spent_usd: float = 0.0
    spent_tokens: int = 0
    reserved_usd: float = 0.0
    reserved_tokens: int = 0

    def room_usd(self) -> float:
        return self.limit_usd - self.spent_usd - self.reserved_usd

    def room_tokens(self) -> float:
        return self.limit_tokens - self.spent_tokens - self.reserved_tokens


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    thread: str
    usd: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a reservation was refused: which pot and resource, and how much was missing."""

    scope: str  # "thread" | "subtree" (an ancestor's cap) | "session"
    resource: str  # "usd" | "tokens"
    needed: float
    available: float
    account: str | None = None  # the ancestor whose cap refused, for scope "subtree"

    def describe(self) -> str:
        who = f"{self.account}'s subtree" if self.scope == "subtree" else self.scope
        if self.resource == "usd":
            return (
                f"{who} budget: next call may cost ${self.needed:.4f}, "
                f"${max(self.available, 0):.4f} left"
            )
        return (
            f"{who} token budget: next call may use {int(self.needed)} tokens, "
            f"{int(max(self.available, 0))} left"
        )


# Float slack so a reservation of exactly the remaining room is accepted.
_EPS = 1e-12


@dataclass
class Ledger:
    session: Account = field(default_factory=Account)
    threads: dict[str, Account] = field(default_factory=dict)
    parents: dict[str, str] = field(default_factory=dict)  # sub-agent → the thread above
    _open: dict[int, Reservation] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    def open_thread(
        self,
        thread: str,
        limit_usd: float = INF,
        limit_tokens: float = INF,
        parent: str | None = None,
    ) -> None:
        """A thread's account; with `parent` (an open thread), it sits in that subtree."""
        if parent is not None:
            if parent not in self.threads:
                raise KeyError(f"no account {parent!r} to put {thread!r} under")
            self.parents[thread] = parent
        self.threads[thread] = Account(limit_usd=limit_usd, limit_tokens=limit_tokens)

    def chain(self, thread: str) -> list[tuple[str, Account]]:
        """The thread's account, then each ancestor's (nearest first)."""
        out = [(thread, self.threads[thread])]
        up = self.parents.get(thread)
        while up is not None:
            out.append((up, self.threads[up]))
            up = self.parents.get(up)
        return out

    def _pots(self, thread: str) -> list[Account]:
        return [acct for _, acct in self.chain(thread)] + [self.session]

    def reserve(self, thread: str, usd: float, tokens: int) -> Reservation | Refusal:
        """Reserves the worst case of one call against the thread, each ancestor and the
        session, or refuses naming the first pot without room."""
        chain = self.chain(thread)
        named: list[tuple[str, str | None, Account]] = [
            ("thread" if i == 0 else "subtree", None if i == 0 else tid, acct)
            for i, (tid, acct) in enumerate(chain)
        ]
        named.append(("session", None, self.session))
        for scope, account, pot in named:
            if usd > pot.room_usd() + _EPS:
                return Refusal(scope, "usd", usd, pot.room_usd(), account)
            if tokens > pot.room_tokens():
                return Refusal(scope, "tokens", tokens, pot.room_tokens(), account)
        for _, _, pot in named:
            pot.reserved_usd += usd
            pot.reserved_tokens += tokens
        res = Reservation(next(self._ids), thread, usd, tokens)
        self._open[res.id] = res
        return res

    def settle(self, res: Reservation, usd: float, tokens: int) -> tuple[float, int]:
        """Turns a reservation into spending; returns the (usd, tokens) actually booked.

        The truth is always booked. Sim models report exactly the estimated prompt tokens, so
        there actual <= reserved; a real provider whose tokenizer counts more than our estimate
        can exceed a reservation by that estimate error, never by concurrency.
        """
        if self._open.pop(res.id, None) is None:
            return 0.0, 0
        for pot in self._pots(res.thread):
            pot.reserved_usd = max(pot.reserved_usd - res.usd, 0.0)
            pot.reserved_tokens = max(pot.reserved_tokens - res.tokens, 0)
            pot.spent_usd += usd
            pot.spent_tokens += tokens
        return usd, tokens

    def release(self, res: Reservation) -> float:
        """Returns an unused reservation (kill, error); idempotent. Returns the USD released."""
        if self._open.pop(res.id, None) is None:
            return 0.0
        for pot in self._pots(res.thread):
            pot.reserved_usd = max(pot.reserved_usd - res.usd, 0.0)
            pot.reserved_tokens = max(pot.reserved_tokens - res.tokens, 0)
        return res.usd

    def raise_limit(self, thread: str | None, usd: float = 0.0, tokens: int = 0) -> None:
        """Adds to a thread's caps, or to the session's when thread is None."""
        pot = self.session if thread is None else self.threads[thread]
        if usd:
            pot.limit_usd += usd
        if tokens:
            pot.limit_tokens += tokens

    def book(self, thread: str, usd: float, tokens: int = 0) -> None:
        """Spending known without a reservation (a call a crash cut off, restored totals):
        in the thread's subtree and every ancestor's, and the session's."""
        for pot in self._pots(thread):
            pot.spent_usd += usd
            pot.spent_tokens += tokens

    def room_usd(self, thread: str) -> float:
        """What the thread may still reserve: the least room along its chain and the
        session's (a child's budget is carved out of this)."""
        return min(pot.room_usd() for pot in self._pots(thread))

    def room_tokens(self, thread: str) -> float:
        return min(pot.room_tokens() for pot in self._pots(thread))

    @property
    def open_reservations(self) -> int:
        return len(self._open)
