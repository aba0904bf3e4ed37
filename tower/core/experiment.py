"""A/B experiments: the same tasks under two or more loop designs, compared side by side.

A variant is a small TOML file laid over the project's tower.toml: its tables are merged
key by key, and its `[[agents]]` entries are merged into the project's agents of the same
name (so `cascade = ["sim/large"]` is all a "strong model only" variant needs). Each
variant runs headless as its own recorded session, with `--approve all` decisions, and is
scored from its reduced state: success by the task's check, cost per success, time per
task, escalations and human interventions per task.
"""

from __future__ import annotations

import asyncio
import copy
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tower.core.events import Event, ThreadState
from tower.core.project import (
    PROJECT_FILE,
    Project,
    ProjectError,
    loads_toml,
    project_from_data,
)
from tower.core.state import TowerState


class ExperimentError(Exception):
    """A variant that cannot be used; the message names the file and the problem."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key == "agents" and isinstance(value, list):
            agents = out.setdefault("agents", [])
            for agent in value:
                if not isinstance(agent, dict) or "name" not in agent:
                    raise ExperimentError("every [[agents]] entry of a variant needs a name")
                same = next((a for a in agents if a.get("name") == agent["name"]), None)
                if same is None:
                    agents.append(copy.deepcopy(agent))
                else:
                    same.update(copy.deepcopy(agent))
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_variant(project_dir: Path, variant: Path, tasks: int | None = None) -> Project:
    """The project with a variant laid over it (and only its first `tasks` tasks)."""
    base_file = project_dir / PROJECT_FILE
    try:
        base = loads_toml(base_file.read_text(encoding="utf-8"), str(base_file))
    except OSError as exc:
        raise ExperimentError(f"{base_file}: {exc}") from None
    except ProjectError as exc:
        raise ExperimentError(exc.problems[0]) from None
    try:
        # The same guarded parser as tower.toml: nesting that exhausts the stack, huge
        # integers and bad TOML are one line, never a traceback.
        over = loads_toml(variant.read_text(encoding="utf-8"), str(variant))
    except OSError as exc:
        raise ExperimentError(f"{variant}: cannot read: {exc.strerror or exc}") from None
    except ProjectError as exc:
        raise ExperimentError(exc.problems[0]) from None
    if "tasks" in over:
        raise ExperimentError(f"{variant}: a variant changes the loop, not the tasks")
    merged = _merge(base, over)
    if tasks is not None:
        merged["tasks"] = merged.get("tasks", [])[:tasks]
    try:
        return project_from_data(merged, project_dir.resolve(), f"{variant} over {base_file}")
    except ProjectError as exc:
        raise ExperimentError(exc.problems[0]) from None


@dataclass
class VariantScore:
    name: str
    file: str
    session: str
    tasks: int
    checked: int
    successes: int
    failed: int
    cost_usd: float
    tokens: int
    p50_s: float | None
    p95_s: float | None
    escalations_per_task: float
    human_per_task: float
    failures: dict[str, int] = field(default_factory=dict)
    unpriced_tokens: int = 0  # tokens of models with no known price: cost is a floor
    # What caching kept off the bill: the providers' prompt caches, and answers served by the
    # response cache (their first cost); and how often long threads were folded.
    saved_usd: float = 0.0
    compactions: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.tasks if self.tasks else 0.0

    @property
    def cost_per_success(self) -> float | None:
        """None without a success, or when part of the cost is unknown (never a silent $0)."""
        if not self.successes or self.unpriced_tokens:
            return None
        return self.cost_usd / self.successes

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["success_rate"] = round(self.success_rate, 4)
        cps = self.cost_per_success
        out["cost_per_success"] = round(cps, 6) if cps is not None else None
        out["cost_usd"] = round(self.cost_usd, 6)
        return out


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def score(name: str, file: str, state: TowerState) -> VariantScore:
    """A variant's figures, from the state its session folded to. A task is a thread the
    project started: its sub-agents are part of it (their cost, escalations and items count
    as the task's, through its subtree), never tasks of their own."""
    every = list(state.threads.values())
    threads = [t for t in every if t.parent is None]
    ok = [t for t in threads if t.state is ThreadState.DONE and t.checked is not False]
    times = [t.ended - t.started for t in threads if t.started is not None and t.ended]
    failures: dict[str, int] = {}
    for t in threads:
        if t not in ok:
            key = "check failed" if t.checked is False else (t.reason[:60] or str(t.state))
            failures[key] = failures.get(key, 0) + 1
    n = len(threads) or 1
    return VariantScore(
        name=name,
        file=file,
        session=state.session,
        tasks=len(threads),
        checked=sum(1 for t in threads if t.checked is not None),
        successes=len(ok),
        failed=len(threads) - len(ok),
        cost_usd=state.budget.spent_usd,
        tokens=state.budget.tokens,
        p50_s=_round(_percentile(times, 50)),
        p95_s=_round(_percentile(times, 95)),
        escalations_per_task=round(sum(t.escalations for t in every) / n, 3),
        human_per_task=round(sum(t.items for t in every) / n, 3),
        failures=failures,
        unpriced_tokens=state.budget.unpriced_tokens,
        saved_usd=state.budget.saved_usd + state.budget.cache_saved_usd,
        compactions=sum(t.compactions for t in every),
    )


def _round(x: float | None) -> float | None:
    return round(x, 3) if x is not None else None


async def run_experiment(
    project_dir: Path,
    variants: list[Path],
    db: str | Path | None,
    tasks: int | None = None,
    on_event: Callable[[str, Event], None] | None = None,
    stop: asyncio.Event | None = None,
) -> list[VariantScore]:
    """Runs every variant in turn on the same tasks, each as its own session; scores them."""
    from tower.core.session import run_headless

    projects = [(v, load_variant(project_dir, v, tasks)) for v in variants]  # all checked first
    names = [v.stem for v in variants]
    if len(set(names)) != len(names):
        raise ExperimentError("two variants share a file name; name them apart")
    scores = []
    for path, project in projects:
        listener = (lambda ev, n=path.stem: on_event(n, ev)) if on_event else None
        result = await run_headless(project, db, "all", listener, stop=stop)
        scores.append(score(path.stem, str(path), result.state))
        if result.interrupted:
            break
    return scores


def table(scores: list[VariantScore]) -> list[list[str]]:
    """Rows for a side-by-side table: a header, then one row per variant."""

    def usd(x: float | None, unpriced: int = 0) -> str:
        if unpriced:
            return "no price"
        return "—" if x is None else f"${x:.4f}"

    def secs(x: float | None) -> str:
        return "—" if x is None else f"{x:.1f}s"

    rows = [
        [
            "variant",
            "success",
            "cost",
            "cost/success",
            "saved by caching",
            "p50 time",
            "p95 time",
            "escalations/task",
            "human/task",
            "session",
        ]
    ]
    for s in scores:
        rows.append(
            [
                s.name,
                f"{s.successes}/{s.tasks} ({s.success_rate:.0%})",
                usd(s.cost_usd, s.unpriced_tokens),
                usd(s.cost_per_success, s.unpriced_tokens),
                usd(s.saved_usd),
                secs(s.p50_s),
                secs(s.p95_s),
                f"{s.escalations_per_task:.2f}",
                f"{s.human_per_task:.2f}",
                s.session,
            ]
        )
    return rows


def winner(scores: list[VariantScore]) -> str | None:
    """The variant with the lowest cost per success among those with the best success rate."""
    best = [s for s in scores if s.cost_per_success is not None]
    if not best:
        return None
    top = max(s.success_rate for s in best)
    return min(
        (s for s in best if s.success_rate == top), key=lambda s: s.cost_per_success or 0
    ).name
