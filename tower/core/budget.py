"""Reserve → settle ledger for money and tokens, per thread and for the whole session.

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

    scope: str  # "thread" | "session"
    resource: str  # "usd" | "tokens"
    needed: float
    available: float

    def describe(self) -> str:
        if self.resource == "usd":
            return (
                f"{self.scope} budget: next call may cost ${self.needed:.4f}, "
                f"${max(self.available, 0):.4f} left"
            )
        return (
            f"{self.scope} token budget: next call may use {int(self.needed)} tokens, "
            f"{int(max(self.available, 0))} left"
        )


# Float slack so a reservation of exactly the remaining room is accepted.
_EPS = 1e-12


@dataclass
class Ledger:
    session: Account = field(default_factory=Account)
    threads: dict[str, Account] = field(default_factory=dict)
    _open: dict[int, Reservation] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    def open_thread(self, thread: str, limit_usd: float = INF, limit_tokens: float = INF) -> None:
        self.threads[thread] = Account(limit_usd=limit_usd, limit_tokens=limit_tokens)

    def reserve(self, thread: str, usd: float, tokens: int) -> Reservation | Refusal:
        """Reserves the worst case of one call against the thread and the session, or refuses."""
        acct = self.threads[thread]
        for scope, pot in (("thread", acct), ("session", self.session)):
            if usd > pot.room_usd() + _EPS:
                return Refusal(scope, "usd", usd, pot.room_usd())
            if tokens > pot.room_tokens():
                return Refusal(scope, "tokens", tokens, pot.room_tokens())
        for pot in (acct, self.session):
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
        acct = self.threads[res.thread]
        for pot in (acct, self.session):
            pot.reserved_usd = max(pot.reserved_usd - res.usd, 0.0)
            pot.reserved_tokens = max(pot.reserved_tokens - res.tokens, 0)
            pot.spent_usd += usd
            pot.spent_tokens += tokens
        return usd, tokens

    def release(self, res: Reservation) -> float:
        """Returns an unused reservation (kill, error); idempotent. Returns the USD released."""
        if self._open.pop(res.id, None) is None:
            return 0.0
        for pot in (self.threads[res.thread], self.session):
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

    @property
    def open_reservations(self) -> int:
        return len(self._open)
