"""The person's attention, measured: time spent deciding, not time items waited.

An item can wait an hour while the person is away, then be declined in two seconds; the
person spent two seconds, the thread was blocked an hour. tower records both, apart: the
blocked time comes from the log (item opened → closed), the attention from this clock.

The clock runs while something that needs a decision is on screen and the terminal has the
person's focus. A decision takes the time accumulated since the previous decision (or since
the item was first shown), with every gap between two keys counted at most `idle_cap_s`, so
a person who walked away is not billed for the walk.

Pure: the caller passes timestamps; no I/O, no Textual.
"""

from __future__ import annotations

IDLE_CAP_S = 30.0


class AttentionClock:
    def __init__(self, idle_cap_s: float = IDLE_CAP_S) -> None:
        self.idle_cap_s = idle_cap_s
        self._running = False
        self._last = 0.0
        self._spent = 0.0

    @property
    def running(self) -> bool:
        return self._running

    def _advance(self, now: float) -> None:
        if self._running:
            self._spent += min(max(now - self._last, 0.0), self.idle_cap_s)
            self._last = now

    def showing(self, now: float) -> None:
        """Something that needs a decision is on screen and the terminal has focus."""
        if not self._running:
            self._running = True
            self._last = now

    def hidden(self, now: float) -> None:
        """Nothing to decide is shown, or the terminal lost focus: the clock stops."""
        self._advance(now)
        self._running = False

    def activity(self, now: float) -> None:
        """A key: the person is here; the gap before it counts, up to the idle cap."""
        self._advance(now)

    def take(self, now: float) -> float:
        """A decision: the seconds it took; the next decision is timed from now."""
        self._advance(now)
        spent, self._spent = self._spent, 0.0
        return spent

    @property
    def pending(self) -> float:
        """Seconds accumulated since the last decision (for display)."""
        return self._spent
