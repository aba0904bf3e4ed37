"""Rebuilding unfinished threads from a session's log, for `tower resume`.

Durable-execution discipline: a model call whose result is in the log is never made (or
billed) again; the thread's messages are rebuilt from recorded calls and tool results. A
side-effecting tool call whose intent is logged but whose result is not may or may not have
happened, so it is never re-run silently: it goes to the inbox as "interrupted — run again?".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tower.core import messages
from tower.core.events import ENDED_STATES, Event, EventKind, ThreadState
from tower.core.llm import ToolCall
from tower.core.messages import Conversation
from tower.core.policy import READ_TOOLS, UNGATED


# Tools whose effect lands outside tower's log; reading tools simply run again.
def has_side_effects(tool: str) -> bool:
    """Whether a call may change the world: everything but reads and talking to the human.

    MCP tools count as side-effecting, since tower cannot know what a server does.
    `spawn_agent`'s whole effect is a thread in tower's own log: a resumed call finds the
    child it started (by the call's id) or starts it then, never twice.
    """
    return tool not in READ_TOOLS and tool not in UNGATED and tool != "spawn_agent"


@dataclass
class ThreadPlan:
    """Everything needed to continue one thread where the log left it."""

    id: str
    spawned: dict[str, Any]
    conversation: Conversation = field(default_factory=Conversation)
    steps: int = 0
    model: str = ""
    pending: list[ToolCall] = field(default_factory=list)  # recorded calls without a result
    interrupted: set[str] = field(default_factory=set)  # ...of which the intent was logged
    guidance: list[str] = field(default_factory=list)  # comments not yet shown to the model
    # Its `finish` succeeded but the crash came before the thread was marked done: it is
    # done with this answer (asking the model again would make a call the log never had).
    finished: str | None = None


def rebuild(events: list[Event], system_prompts: dict[str, str]) -> list[ThreadPlan]:
    """Plans for every thread that had not ended, in spawn order."""
    plans: dict[str, ThreadPlan] = {}
    ended: set[str] = set()
    called: dict[str, set[str]] = {}
    results: dict[str, set[str]] = {}
    last_calls: dict[str, list[dict[str, Any]]] = {}
    answers: dict[str, str] = {}  # a finish call's answer, by call id
    for ev in events:
        tid = ev.thread
        if tid is None:
            continue
        p = ev.payload
        kind = ev.kind
        if kind is EventKind.THREAD_SPAWNED:
            conv = messages.spawned_conversation(p, system_prompts)
            plans[tid] = ThreadPlan(tid, p, conv, model=p["model"])
            called[tid], results[tid], last_calls[tid] = set(), set(), []
            continue
        plan = plans.get(tid)
        if plan is None:
            continue
        plan.conversation.apply(ev)  # what the model was sent: the live loop's own fold
        if kind is EventKind.LLM_STARTED:
            for note in p.get("guidance", ()):
                if note in plan.guidance:
                    plan.guidance.remove(note)
        elif kind is EventKind.LLM_FINISHED:
            plan.steps = p["step"]
            plan.model = p["model"]
            last_calls[tid] = p.get("tool_calls") or []
            called[tid], results[tid] = set(), set()
        elif kind is EventKind.TOOL_CALLED:
            called[tid].add(p["call_id"])
            if p.get("tool") == "finish":
                answers[p["call_id"]] = str((p.get("args") or {}).get("answer", ""))
        elif kind is EventKind.TOOL_RESULT:
            results[tid].add(p["call_id"])
            if p.get("tool") == "finish" and p.get("ok"):
                plan.finished = answers.get(p["call_id"], "")
        elif kind is EventKind.ESCALATED and p["to_model"] != "human":
            plan.model = p["to_model"]
        elif kind is EventKind.COMMENT:
            plan.guidance.append(p["text"])
        elif kind is EventKind.THREAD_STATE and ThreadState(p["state"]) in ENDED_STATES:
            ended.add(tid)
    out = []
    for tid, plan in plans.items():
        if tid in ended:
            continue
        for call in last_calls[tid]:
            if call["id"] in results[tid]:
                continue
            fn = call.get("function", {})
            plan.pending.append(ToolCall(call["id"], fn.get("name", ""), fn.get("arguments", "")))
            if call["id"] in called[tid] and has_side_effects(str(fn.get("name"))):
                plan.interrupted.add(call["id"])
        out.append(plan)
    return out
