"""Sub-agents: what the `spawn_agent` and `wait_agents` tools ask for, and what they answer.

Pure functions: the supervisor starts the threads, the ledger bounds their spending (a
child's reservations count against every ancestor's cap), and this module reads a model's
arguments (a model's mistake is a one-line error it can correct) and words the results.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tower.core.events import Event, EventKind
from tower.core.project import Project
from tower.core.state import ThreadView, TowerState, subtree
from tower.core.tools import ToolError

# A child's answer, as its parent is given it, is cut at this many characters.
ANSWER_CHARS = 4000
_HEADING = re.compile(r"^## (\S+) \(", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class SpawnRequest:
    prompt: str
    agent: str
    model: str | None
    budget_usd: float | None
    title: str | None


def spawn_request(
    args: dict[str, Any], parent: ThreadView, own_agent: str, project: Project, room_usd: float
) -> SpawnRequest:
    """The child a spawn_agent call asks for, within the project's depth and fan-out
    limits and the parent's money left; ToolError says what to change otherwise."""
    limits = project.limits
    if parent.depth + 1 > limits.max_depth:
        raise ToolError(
            f"you cannot start sub-agents: you are {parent.depth} level(s) below a task and "
            f"the project allows {limits.max_depth} (limits.max_depth); do the work yourself"
        )
    if len(parent.children) >= limits.max_children:
        raise ToolError(
            f"you have started {len(parent.children)} sub-agents, the most the project allows "
            f"(limits.max_children); wait for them or do the rest yourself"
        )
    prompt = args.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ToolError("spawn_agent needs a prompt: the sub-agent's whole task, as text")
    agent = args.get("agent") or own_agent
    names = [a.name for a in project.agents]
    if not isinstance(agent, str) or agent not in names:
        raise ToolError(f"no agent template {agent!r}; the templates are {', '.join(names)}")
    model = args.get("model") or None
    if model is not None and not isinstance(model, str):
        raise ToolError("model must be a model's name, as text")
    budget = args.get("budget_usd")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int | float):
            raise ToolError("budget_usd must be a number of dollars")
        budget = float(budget)
        if not math.isfinite(budget) or budget <= 0:
            raise ToolError("budget_usd must be more than 0")
        if budget > room_usd + 1e-12:
            raise ToolError(
                f"budget_usd {budget:g} is more than the ${max(room_usd, 0):.4f} you have left; "
                "ask for less"
            )
    title = args.get("title")
    title = title.strip()[:80] if isinstance(title, str) and title.strip() else None
    return SpawnRequest(prompt.strip(), agent, model, budget, title)


def spawned_text(child: str, budget_usd: float | None, room_usd: float) -> str:
    """What spawn_agent answers: the child's id and the money it may use."""
    cap = budget_usd if budget_usd is not None else room_usd
    money = f"up to ${cap:.4f}" if math.isfinite(cap) else "no cap of its own"
    return f"started sub-agent {child} ({money}); call wait_agents to get its answer"


def wait_ids(args: dict[str, Any], parent: ThreadView, collected: set[str]) -> list[str]:
    """The children a wait_agents call names (default: those not yet waited for)."""
    ids = args.get("ids")
    if ids is None or ids == []:
        return [c for c in parent.children if c not in collected]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ToolError("ids must be a list of your sub-agents' ids")
    strangers = [i for i in ids if i not in parent.children]
    if strangers:
        mine = ", ".join(parent.children) or "none"
        raise ToolError(f"not your sub-agent(s): {', '.join(strangers)}; yours are {mine}")
    return list(dict.fromkeys(ids))


def results_text(views: Iterable[ThreadView]) -> str:
    """The children's outcomes, one section each (the parent's resumer reads the headings)."""
    parts = []
    for v in views:
        body = v.answer if v.answer is not None else f"(no answer: {v.reason or v.state})"
        if len(body) > ANSWER_CHARS:
            body = body[:ANSWER_CHARS] + f" … [{len(body) - ANSWER_CHARS} more characters]"
        parts.append(f"## {v.id} ({v.state}, ${v.subtree_usd:.4f})\n{body}")
    return "\n\n".join(parts) if parts else "You have no sub-agents to wait for."


def collect(out: dict[str, set[str]], ev: Event) -> None:
    """Adds the children a recorded wait_agents result gave its thread (one event)."""
    if ev.kind is EventKind.TOOL_RESULT and ev.thread is not None:
        p = ev.payload
        if p.get("tool") == "wait_agents" and p.get("ok"):
            found = _HEADING.findall(str(p.get("result") or ""))
            out.setdefault(ev.thread, set()).update(found)


def collected_from(events: Iterable[Event]) -> dict[str, set[str]]:
    """Per thread, the children whose answers a recorded wait_agents call gave it."""
    out: dict[str, set[str]] = {}
    for ev in events:
        collect(out, ev)
    return out


def tree_lines(state: TowerState, width: int = 100) -> list[str]:
    """Each tree of sub-agents as text (headless output): a parent, then its children
    indented under it, with state, own cost and, for a parent, its subtree's cost."""
    out: list[str] = []

    def walk(tid: str, lead: str, branch: str) -> None:
        v = state.threads[tid]
        cost = f"${v.cost_usd + v.lost_usd:.4f}"
        if v.children:
            cost += f"  subtree ${v.subtree_usd:.4f} ({len(subtree(state, tid))} threads)"
        name = f"{lead}{branch}{tid}"
        out.append(f"{name:<32} {v.state!s:<8} {cost}"[:width])
        below = lead + ("   " if branch == "└─ " else "│  " if branch else "")
        for i, child in enumerate(v.children):
            last = i == len(v.children) - 1
            walk(child, below, "└─ " if last else "├─ ")

    for v in state.threads.values():
        if v.parent is None and v.children:
            walk(v.id, "", "")
    return out
