"""Pure formatting for the screen: money, tokens, ages, bars. No Textual, easy to test."""

from __future__ import annotations

import json
import math
from typing import Any

from tower.core.progress import RateMeter


def usd(x: float | None, places: int = 4) -> str:
    """Dollars with at least `places` decimals; an amount with up to four decimals is never
    rounded to a different one ($0.085 stays $0.085, never $0.09). Sums below a billionth
    are float residue and show as zero."""
    if x is None:
        return "—"
    if abs(x) < 1e-9:
        return f"${0:.{places}f}"
    if abs(x) < 10**-places:
        return f"${x:.6f}"
    # An amount a person typed ($0.085, $0.0125) is shown exactly, up to four decimals;
    # a measured cost keeps the requested precision.
    exact = round(x, 6)
    more = places
    while more < 4 and round(x, more) != exact:
        more += 1
    if round(x, more) == exact:
        places = more
    return f"${x:,.{places}f}"


def tokens(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.2f}M"


def age(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def duration_minutes(minutes: float | None) -> str:
    if minutes is None or math.isinf(minutes):
        return "—"
    return age(minutes * 60)


def fit(text: str, width: int) -> str:
    """Cuts text to width with an ellipsis, and pads it to width."""
    text = " ".join(text.split()) if "\n" in text or "\t" in text else text
    if len(text) > width:
        return text[: max(width - 1, 0)] + "…"
    return text.ljust(width)


def pretty_args(args: Any, width: int = 80, max_lines: int = 30) -> str:
    """Tool arguments as indented JSON, long strings kept but capped in lines."""
    text = json.dumps(args, indent=2, ensure_ascii=False, default=str)
    lines = text.splitlines()
    if len(lines) > max_lines:
        lines = [*lines[:max_lines], f"… {len(lines) - max_lines} more line(s)"]
    return "\n".join(lines)


def budget_level(spent: float, reserved: float, limit: float | None) -> str:
    """'ok', 'warning' (≥ 80 % used or reserved) or 'error' (≥ 100 %)."""
    if not limit:
        return "ok"
    used = (spent + reserved) / limit
    if spent >= limit or used >= 1.0:
        return "error"
    if used >= 0.8:
        return "warning"
    return "ok"


# Money burned per minute over a sliding window: the same meter as the run's throughput.
BurnMeter = RateMeter


def minutes_left(limit: float | None, spent: float, reserved: float, per_minute: float) -> float:
    if not limit or per_minute <= 0:
        return math.inf
    return max(limit - spent - reserved, 0.0) / per_minute
