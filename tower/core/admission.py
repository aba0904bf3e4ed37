"""Backpressure: how many model calls may be in flight, adapted to tower's own load.

`[limits] max_concurrent` says how many threads may run; it is a promise about the fleet,
not about this machine. Ten thousand streaming calls on one event loop starve each other:
every chunk of every call waits its turn, a 50 ms model takes 46 s, and calls fail "no
answer within the call timeout" that the provider answered long ago (and may still bill).

So two things here:

- `LoopLag` samples the event loop's lag (how late a 50 ms sleep wakes up) and keeps the
  total time the loop was stalled. A call's timeout counts provider time, not tower's queue:
  `provider_timeout` pushes its deadline back by the stall measured while it ran.
- `CallGate` admits calls the AIMD way (TCP's congestion window, Netflix's
  concurrency-limits): +1 to the limit for each call that ends while the loop keeps up,
  ×0.75 when the lag passes the target (at most once per cooldown, so one slow stretch is one
  cut). A call waits at the gate before its reservation and its timeout start, so waiting
  costs neither budget nor the provider's clock.

`Aimd` is the arithmetic alone (pure, clock passed in) so tests can drive it step by step.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

SAMPLE_S = 0.05  # how often the loop's lag is sampled
TARGET_LAG_S = 0.05  # the lag above which the gate closes down
MIN_LIMIT = 4
START_LIMIT = 32
BACKOFF = 0.75
COOLDOWN_S = 0.25  # at most one cut per this long: the last cut needs time to show
STALL_CAP = 4.0  # a call's deadline moves back by at most this many times its timeout


@dataclass
class Aimd:
    """Additive increase, multiplicative decrease of a concurrency limit."""

    max_limit: int
    target_lag_s: float = TARGET_LAG_S
    min_limit: int = MIN_LIMIT
    limit: float = 0.0
    lag_s: float = 0.0  # the latest sample
    cut_at: float = float("-inf")
    cuts: int = 0

    def __post_init__(self) -> None:
        self.min_limit = min(self.min_limit, self.max_limit)
        if not self.limit:
            self.limit = float(min(self.max_limit, max(START_LIMIT, self.min_limit)))

    @property
    def allowed(self) -> int:
        return max(int(self.limit), self.min_limit)

    def sample(self, lag_s: float, now: float) -> None:
        """A lag reading: past the target, cut the limit (once per cooldown), the deeper the
        further past (by target/lag, between ×0.5 and ×0.75)."""
        self.lag_s = lag_s
        if lag_s > self.target_lag_s and now - self.cut_at >= COOLDOWN_S:
            factor = min(BACKOFF, max(0.5, self.target_lag_s / lag_s))
            self.limit = max(float(self.min_limit), self.limit * factor)
            self.cut_at = now
            self.cuts += 1

    def done(self, in_flight: int) -> None:
        """A call ended: if the loop has room to spare (lag under half the target) and the
        limit is what holds calls back (at least half of it in use), open it by one."""
        if self.lag_s * 2 <= self.target_lag_s and in_flight * 2 >= self.limit:
            self.limit = min(float(self.max_limit), self.limit + 1.0)


class LoopLag:
    """Samples the running loop's lag; `stalled_at(now)` is the total stall so far."""

    def __init__(self, on_sample: Callable[[float, float], None] | None = None) -> None:
        self.stalled = 0.0
        self.lag_s = 0.0
        self.worst_s = 0.0
        self._due: float | None = None
        self._on_sample = on_sample
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tower:lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + SAMPLE_S
            await asyncio.sleep(SAMPLE_S)
            now = loop.time()
            lag = max(0.0, now - self._due)
            self._due = None
            self.stalled += lag
            self.lag_s = lag
            self.worst_s = max(self.worst_s, lag)
            if self._on_sample is not None:
                self._on_sample(lag, now)

    def stalled_at(self, now: float) -> float:
        """Stall so far, counting the sample that is overdue right now (the sampler may be
        starved by the very stall a deadline is asking about)."""
        pending = max(0.0, now - self._due) if self._due is not None else 0.0
        return self.stalled + pending


@contextlib.asynccontextmanager
async def provider_timeout(seconds: float, lag: LoopLag | None) -> AsyncIterator[None]:
    """`asyncio.timeout(seconds)`, but seconds of the provider's, not of tower's event loop:
    the deadline moves back by the loop stall measured meanwhile (up to STALL_CAP × seconds
    in all, so a stalled loop cannot keep a hung call alive for ever)."""
    if lag is None:
        async with asyncio.timeout(seconds):
            yield
        return
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    s0 = lag.stalled_at(t0)
    hard = t0 + seconds * STALL_CAP
    async with asyncio.timeout(None) as cm:
        handle: asyncio.TimerHandle | None = None

        def check() -> None:
            nonlocal handle
            now = loop.time()
            spent = (now - t0) - (lag.stalled_at(now) - s0)
            if spent >= seconds or now >= hard:
                cm.reschedule(now)  # expires at once: TimeoutError as asyncio.timeout gives
                handle = None
            else:
                handle = loop.call_at(min(now + seconds - spent, hard), check)

        handle = loop.call_at(t0 + seconds, check)
        try:
            yield
        finally:
            if handle is not None:
                handle.cancel()


class CallGate:
    """Admits model calls up to the AIMD limit, in the scheduler's order: higher priority
    first, then the thread spawned first. (First come first served would move every thread
    one step at a time in lockstep: with 3,000 threads, none would finish until all had
    almost finished. In spawn order, threads finish as they would with fewer at once.)"""

    def __init__(
        self, max_limit: int, *, adaptive: bool = True, target_lag_s: float = TARGET_LAG_S
    ):
        self.adaptive = adaptive
        self.aimd = Aimd(max_limit, target_lag_s=target_lag_s)
        if not adaptive:
            self.aimd.limit = float(max_limit)
        self.lag = LoopLag(self._sample if adaptive else None)
        # Lag measured elsewhere that the gate answers to as well: the worker processes'
        # loops, when calls run there (core/callworkers.py), so calls do not queue in them.
        self.other_lag: Callable[[], float] | None = None
        self.in_flight = 0
        self.admitted = 0
        self.waiting = 0  # calls waiting for room (a plain int the UI's thread may read)
        self._heap: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def limit(self) -> int:
        return self.aimd.allowed

    def start(self) -> None:
        self.lag.start()

    async def stop(self) -> None:
        await self.lag.stop()

    def _sample(self, lag_s: float, now: float) -> None:
        if self.other_lag is not None:
            lag_s = max(lag_s, self.other_lag())
        self.aimd.sample(lag_s, now)

    async def acquire(self, key: tuple[int, int] = (0, 0)) -> None:
        """Waits for room; `key` orders the waiters, lowest first (-priority, spawn order).
        Cancel-safe: a cancelled waiter holds nothing."""
        if self.in_flight < self.limit and not self.waiting:
            self.in_flight += 1
            self.admitted += 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (key, next(self._arrivals), fut))
        self.waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(ended=False)  # admitted as it was cancelled: hand the slot on
            else:
                fut.cancel()  # left in the heap, skipped when it comes up
                self.waiting -= 1
            raise

    def release(self, ended: bool = True) -> None:
        """A call ended (or a slot is handed back unused); wakes whoever now fits."""
        self.in_flight -= 1
        if ended and self.adaptive:
            self.aimd.done(self.in_flight + 1)
        self._wake()

    def _wake(self) -> None:
        while self._heap and self.in_flight < self.limit:
            _key, _n, fut = heapq.heappop(self._heap)
            if fut.done():
                continue  # cancelled while waiting (already uncounted)
            self.waiting -= 1
            self.in_flight += 1
            self.admitted += 1
            fut.set_result(None)
