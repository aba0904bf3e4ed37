"""Per-model requests-per-minute and tokens-per-minute caps, over a sliding minute.

Pure arithmetic on timestamps (the supervisor supplies the clock), so a test can ask "how
long must the next call wait?" without waiting. Calling a provider past its published
limits only buys 429s and retries; waiting here is cheaper and visible.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class Use:
    at: float
    tokens: int


@dataclass
class RateWindow:
    rpm: int | None = None
    tpm: int | None = None
    uses: deque[Use] = field(default_factory=deque)

    def _expire(self, now: float) -> None:
        while self.uses and self.uses[0].at <= now - WINDOW_S:
            self.uses.popleft()

    def wait(self, now: float, tokens: int) -> tuple[float, str]:
        """Seconds until a call of `tokens` fits both caps (0 if now), and which cap holds it."""
        self._expire(now)
        waits: list[tuple[float, str]] = []
        if self.rpm is not None and len(self.uses) >= self.rpm:
            oldest = self.uses[len(self.uses) - self.rpm]
            waits.append((oldest.at + WINDOW_S - now, f"{self.rpm} requests/min"))
        if self.tpm is not None and self.uses:
            used = sum(u.tokens for u in self.uses)
            if used + tokens > self.tpm:
                # Wait until enough of the minute's tokens have aged out; a call larger than
                # the whole cap waits for an empty minute, then goes alone.
                need = used + min(tokens, self.tpm) - self.tpm
                freed = 0
                for u in self.uses:
                    freed += u.tokens
                    if freed >= need:
                        waits.append((u.at + WINDOW_S - now, f"{self.tpm:,} tokens/min"))
                        break
        if not waits:
            return 0.0, ""
        delay, why = max(waits)
        return max(delay, 0.0), why

    def record(self, now: float, tokens: int) -> Use:
        """Counts a call that starts now; the returned entry can be corrected once it ends."""
        use = Use(now, tokens)
        self.uses.append(use)
        return use
