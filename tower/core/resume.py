"""Rebuilding unfinished threads from a session's log, for `tower resume`.

Durable-execution discipline: a model call whose result is in the log is never made (or
billed) again; the thread's messages are rebuilt from recorded calls and tool results. A
side-effecting tool call whose intent is logged but whose result is not may or may not have
happened, so it is never re-run silently: it goes to the inbox as "interrupted — run again?".
"""

from __future__ import annotations

from collections.abc import Iterable
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


class Rebuilder:
    """Plans for every thread that had not ended, gathered one event at a time: a thread's
    working set is dropped the moment it ends, so a resume's memory follows the threads
    still open, not the length of the log."""

    def __init__(self, system_prompts: dict[str, str]) -> None:
        self.prompts = system_prompts
        self.plans: dict[str, ThreadPlan] = {}
        self.ended: set[str] = set()
        self.called: dict[str, set[str]] = {}
        self.results: dict[str, set[str]] = {}
        self.last_calls: dict[str, list[dict[str, Any]]] = {}
        self.answers: dict[str, str] = {}  # a finish call's answer, by call id

    def feed(self, ev: Event) -> None:
        tid = ev.thread
        if tid is None:
            return
        p = ev.payload
        kind = ev.kind
        if kind is EventKind.THREAD_SPAWNED:
            if tid in self.ended:
                return  # an id spawned again after it ended stays ended, as it always did
            conv = messages.spawned_conversation(p, self.prompts)
            self.plans[tid] = ThreadPlan(tid, p, conv, model=p["model"])
            self.called[tid], self.results[tid], self.last_calls[tid] = set(), set(), []
            return
        plan = self.plans.get(tid)
        if plan is None:
            return
        plan.conversation.apply(ev)  # what the model was sent: the live loop's own fold
        if kind is EventKind.LLM_STARTED:
            for note in p.get("guidance", ()):
                if note in plan.guidance:
                    plan.guidance.remove(note)
        elif kind is EventKind.LLM_FINISHED or kind is EventKind.LLM_CACHED:
            if kind is EventKind.LLM_CACHED:  # the call and its reply in one event
                for note in p.get("guidance", ()):
                    if note in plan.guidance:
                        plan.guidance.remove(note)
            plan.steps = p["step"]
            plan.model = p["model"]
            self.last_calls[tid] = p.get("tool_calls") or []
            self.called[tid], self.results[tid] = set(), set()
        elif kind is EventKind.TOOL_CALLED:
            self.called[tid].add(p["call_id"])
            if p.get("tool") == "finish":
                self.answers[p["call_id"]] = str((p.get("args") or {}).get("answer", ""))
        elif kind is EventKind.TOOL_RESULT:
            self.results[tid].add(p["call_id"])
            if p.get("tool") == "finish" and p.get("ok"):
                plan.finished = self.answers.pop(p["call_id"], "")
        elif kind is EventKind.ESCALATED and p["to_model"] != "human":
            plan.model = p["to_model"]
        elif kind is EventKind.COMMENT:
            plan.guidance.append(p["text"])
        elif kind is EventKind.THREAD_STATE and ThreadState(p["state"]) in ENDED_STATES:
            self.ended.add(tid)
            del self.plans[tid], self.called[tid], self.results[tid], self.last_calls[tid]

    def finish(self) -> list[ThreadPlan]:
        """The plans, in spawn order, with each one's calls the log has no result for."""
        out = []
        for tid, plan in self.plans.items():
            results, called = self.results[tid], self.called[tid]
            for call in self.last_calls[tid]:
                if call["id"] in results:
                    continue
                fn = call.get("function", {})
                name = str(fn.get("name", ""))
                plan.pending.append(ToolCall(call["id"], name, fn.get("arguments", "")))
                if call["id"] in called and has_side_effects(name):
                    plan.interrupted.add(call["id"])
            out.append(plan)
        return out


def rebuild(events: Iterable[Event], system_prompts: dict[str, str]) -> list[ThreadPlan]:
    """Plans for every thread that had not ended, in spawn order."""
    rebuilder = Rebuilder(system_prompts)
    for ev in events:
        rebuilder.feed(ev)
    return rebuilder.finish()
