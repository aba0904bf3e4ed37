"""Built-in profiles of the offline `sim/…` models: prices, speed and how often they err.

Kept apart from `sim.py` (which imports litellm) so project validation stays instant.
Prices are in USD per million tokens, as provider price pages state them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class SimProfile:
    """How a sim model behaves; a project may override any field under `[models."sim/…"]`."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    tokens_per_s: float  # streaming rate; 0 means as fast as possible
    latency_s: float  # time to first token
    wrong_rate: float  # chance a scripted step uses its `wrong_args` instead of `args`
    context_window: int = 128_000
    faults: dict[str, float] = field(default_factory=dict)  # fault name -> chance per call
    # Prompt caching as OpenAI does it, automatically: a prompt of at least 1,024 tokens
    # whose start repeats the thread's previous call is read from the cache, in 128-token
    # blocks, at this price (default: a tenth of the input price).
    cached_input_usd_per_mtok: float | None = None

    @property
    def cached_usd_per_mtok(self) -> float:
        explicit = self.cached_input_usd_per_mtok
        return self.input_usd_per_mtok * 0.1 if explicit is None else explicit

    def with_overrides(self, overrides: dict[str, Any]) -> SimProfile:
        return replace(self, **overrides) if overrides else self


SIM_PROFILES: dict[str, SimProfile] = {
    # Cheap and quick, and wrong now and then: the default worker.
    "sim/small": SimProfile(0.15, 0.60, tokens_per_s=400, latency_s=0.05, wrong_rate=0.2),
    # About 20x the price, slower, never wrong: what escalation buys.
    "sim/large": SimProfile(3.00, 12.00, tokens_per_s=150, latency_s=0.20, wrong_rate=0.0),
    # No latency at all: for tests and benchmarks that measure tower, not the model.
    "sim/instant": SimProfile(0.15, 0.60, tokens_per_s=0, latency_s=0.0, wrong_rate=0.0),
}

FAULT_NAMES = ("rate_limit", "server_error", "timeout", "malformed_tool_json")


def is_sim(model: str) -> bool:
    return model.startswith("sim/")
