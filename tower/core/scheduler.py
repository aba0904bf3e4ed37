"""The scheduler: which queued thread starts next, and when a started one may call its model.

Three limits, each in its own place:
- thread slots: at most `limits.max_concurrent` threads run, and at most a model's
  `max_concurrent` on that model; queued threads start by priority, then spawn order;
- call slots: the `CallGate` in front of every model call, sized by tower's own load
  (admission.py), so waiting never holds money or counts against a provider's timeout;
- rate limits: each model's rpm/tpm window (ratelimit.py).

It knows threads only as `ThreadRun`s and asks its owner, through callbacks, whether one is
paused and how to start one; so it can be tested without a supervisor.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator

from tower.core.admission import CallGate
from tower.core.project import LimitSettings, ModelSettings
from tower.core.ratelimit import RateWindow, Use
from tower.core.run import ThreadRun


class Scheduler:
    def __init__(
        self,
        limits: LimitSettings,
        model_settings: Callable[[str], ModelSettings],
        *,
        paused: Callable[[ThreadRun], bool],
        start: Callable[[ThreadRun], asyncio.Task[None]],
        waiting: Callable[[ThreadRun, str], None],
    ) -> None:
        """`start` runs a thread given its slot; `waiting` tells a thread why it waits (a
        model's slots are all taken, its rate limit)."""
        self.limits = limits
        self.model_settings = model_settings
        self._paused = paused
        self._start = start
        self._waiting = waiting
        self.queue: list[tuple[int, int, str]] = []  # (-priority, order, id), kept sorted
        self._queued: dict[str, ThreadRun] = {}
        self._order = itertools.count()
        self.running = 0
        self.per_model: Counter[str] = Counter()
        self._held = 0  # while > 0, nothing starts (a batch of spawns is being queued)
        self.closed = False
        self._rates: dict[str, RateWindow] = {}
        # Calls in flight adapt to tower's own load; their timeouts count provider time.
        self.calls = CallGate(
            limits.max_concurrent,
            adaptive=limits.adaptive,
            target_lag_s=limits.target_lag_ms / 1000,
        )

    @property
    def queued(self) -> int:
        """Threads waiting for a slot."""
        return len(self._queued)

    def next_order(self) -> int:
        """Spawn order: among equal priorities, the earlier spawned starts (and calls) first."""
        return next(self._order)

    def enqueue(self, th: ThreadRun) -> None:
        bisect.insort(self.queue, (-th.priority, th.order, th.id))
        self._queued[th.id] = th
        self.pump()

    def dequeue(self, th: ThreadRun) -> None:
        """A thread that ends while queued leaves the queue."""
        key = (-th.priority, th.order, th.id)
        at = bisect.bisect_left(self.queue, key)
        if at < len(self.queue) and self.queue[at] == key:
            del self.queue[at]
        self._queued.pop(th.id, None)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Queue several threads before any starts, so priority (not spawn timing) decides
        who goes first; the queue is pumped once at the end."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        self.pump()

    def pump(self) -> None:
        """Starts queued threads in priority order while global and per-model slots are free."""
        if self.closed or self._held:
            return
        cap = self.limits.max_concurrent
        i = 0
        while i < len(self.queue) and self.running < cap:
            th = self._queued[self.queue[i][2]]
            mcap = self.model_settings(th.model).max_concurrent
            pausing = self._paused(th)
            if pausing or (mcap is not None and self.per_model[th.model] >= mcap):
                if not pausing:
                    self._waiting(th, f"waiting for a {th.model} slot ({mcap})")
                i += 1
                continue
            del self.queue[i]
            del self._queued[th.id]
            self.running += 1
            th.slot_model = th.model
            self.per_model[th.model] += 1
            th.task = self._start(th)

    def free_slot(self, th: ThreadRun) -> None:
        """An ended thread gives its slot back (the caller pumps)."""
        if th.slot_model is not None:
            self.running -= 1
            self.per_model[th.slot_model] -= 1
            th.slot_model = None

    def move_slot(self, th: ThreadRun) -> None:
        """An escalated thread's slot counts against its new model from now on."""
        if th.slot_model is not None:
            self.per_model[th.slot_model] -= 1
            th.slot_model = th.model
            self.per_model[th.model] += 1

    def reset_rates(self) -> None:
        """A reloaded project's rpm/tpm apply from the next call."""
        self._rates.clear()

    async def rate_gate(self, th: ThreadRun, model: str, tokens: int) -> Use | None:
        """Waits until a call of `tokens` fits the model's rpm/tpm caps; the thread says so
        meanwhile. Returns the recorded use (corrected to real tokens after the call)."""
        settings = self.model_settings(model)
        if settings.rpm is None and settings.tpm is None:
            return None
        window = self._rates.get(model)
        if window is None:
            window = self._rates[model] = RateWindow(settings.rpm, settings.tpm)
        while True:
            delay, why = window.wait(time.monotonic(), tokens)
            if delay <= 0:
                break
            self._waiting(th, f"waiting for {model}: {why}")
            await asyncio.sleep(delay)
        return window.record(time.monotonic(), tokens)
