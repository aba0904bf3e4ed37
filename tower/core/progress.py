"""How far a run has come and when it will end: tasks ended of all planned, throughput and an
ETA. One computation for the budget bar and `tower ls`, so an overnight run reads the same
from the screen and from a script.

Pure: a RateMeter is fed (time, count) samples by whoever ticks (the screen once a second,
the service with its figures), and `progress` reads counts the reducer keeps, so a tick
costs the same at a million threads as at ten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tower.core.events import ENDED_STATES, ThreadState
from tower.core.state import TowerState


class RateMeter:
    """A growing total's rate over a sliding window, from (time, total) samples."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, total: float) -> None:
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()

    def per_second(self) -> float:
        """0 until the window spans a second: two samples close together say nothing."""
        if len(self.samples) < 2:
            return 0.0
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        if t1 - t0 < 1.0:
            return 0.0
        return max(s1 - s0, 0.0) / (t1 - t0)

    def per_minute(self) -> float:
        return self.per_second() * 60.0


@dataclass(frozen=True, slots=True)
class Progress:
    ended: int  # threads ended (done, failed, killed, skipped)
    done: int
    total: int  # every task of the run: threads, and copies not spawned yet
    left: int  # not ended yet: live threads, copies not started, tasks waiting on others
    per_s: float  # threads ended per second, over the meter's window
    eta_s: float | None  # None while nothing ends (no rate to go by)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "ended": self.ended,
            "done": self.done,
            "total": self.total,
            "left": self.left,
            "per_s": round(self.per_s, 3),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
        }


def ended_count(state: TowerState) -> int:
    return sum(state.count(s) for s in ENDED_STATES)


def progress(state: TowerState, per_s: float) -> Progress:
    ended = ended_count(state)
    pending = state.tasks_unstarted + len(state.waiting_tasks)
    left = len(state.threads) - ended + pending
    if left == 0:
        eta: float | None = 0.0
    else:
        eta = left / per_s if per_s > 0 else None
    return Progress(
        ended=ended,
        done=state.count(ThreadState.DONE),
        total=len(state.threads) + pending,
        left=left,
        per_s=per_s,
        eta_s=eta,
    )


def rate_text(per_s: float) -> str:
    """'93.4/s', or '12/min' when slower than one a second."""
    if per_s >= 1.0:
        return f"{per_s:,.1f}/s"
    return f"{per_s * 60:,.1f}/min"
