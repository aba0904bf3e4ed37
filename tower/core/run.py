"""A thread's live side and the small records the supervisor's parts pass around.

Kept apart from the supervisor so the agent loop, the scheduler, the inbox and the resumer
can name a thread's run without importing the supervisor (and each other).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tower.core import llm
from tower.core.budget import Reservation
from tower.core.events import Event, EventKind, InboxKind, Resolution, ThreadState
from tower.core.messages import Conversation
from tower.core.project import AgentSettings, TaskSettings
from tower.core.tools import Workspace


class CommandError(Exception):
    """A command that cannot apply (unknown thread or item, thread already ended...)."""


@dataclass(slots=True)
class Decision:
    resolution: Resolution
    by: str = "human"
    text: str | None = None
    args: dict[str, Any] | None = None
    attention_s: float | None = None  # the person's time on this decision (from the UI)
    batch: str | None = None  # one key decided several items: the first item's id


@dataclass(eq=False, slots=True)
class ThreadRun:
    """A thread's live, non-serialisable side: its task, futures and message history."""

    id: str
    agent: AgentSettings
    prompt: str
    task_id: str
    title: str
    cascade: list[str]
    priority: int
    order: int
    workspace_src: Path | None
    script: list[dict[str, Any]] | None
    default_answer: str | None
    budget_usd: float | None
    budget_tokens: int | None
    model_index: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    task: asyncio.Task[None] | None = None
    state: ThreadState = ThreadState.QUEUED
    resume: asyncio.Event | None = None  # set by a resume while it waits paused
    items: dict[str, tuple[InboxKind, asyncio.Future[Decision]]] = field(default_factory=dict)
    escalation: asyncio.Future[Decision] | None = None
    reservation: Reservation | None = None
    call_id: str | None = None
    slot_model: str | None = None
    guidance: list[str] = field(default_factory=list)
    workspace: Workspace | None = None
    pending: list[llm.ToolCall] = field(default_factory=list)  # resumed: calls without result
    interrupted: set[str] = field(default_factory=set)  # ...whose effect may have happened
    recent_calls: list[str] = field(default_factory=list)  # to notice a loop
    error_streak: int = 0  # tool errors in a row
    empty_streak: int = 0  # empty replies (no text, no tool call) in a row
    after: list[str] = field(default_factory=list)  # task graphs: the threads it waited for
    parent: str | None = None  # sub-agents: the thread whose spawn_agent started it
    collected: set[str] = field(default_factory=set)  # children whose answers it was given
    ended_event: asyncio.Event | None = None  # see on_end()
    # A compaction changed the prompt from this message on: the provider's prompt cache can
    # serve only what comes before it on the next call (the sim models are told so).
    cache_break: int | None = None
    # The messages the model is sent: folded from this thread's events as they are emitted.
    conversation: Conversation | None = None

    def __post_init__(self) -> None:
        if self.conversation is None:
            self.conversation = Conversation(self.messages)
        self.messages = self.conversation.messages

    @property
    def model(self) -> str:
        return self.cascade[self.model_index]

    def on_end(self) -> asyncio.Event:
        """An event set when the thread ends, made on first ask (a parent waiting for its
        sub-agents): ten thousand threads need not each carry one."""
        if self.ended_event is None:
            self.ended_event = asyncio.Event()
            if self.ended:
                self.ended_event.set()
        return self.ended_event

    @property
    def ended(self) -> bool:
        return self.state.ended


@dataclass(frozen=True, slots=True)
class TaskCopy:
    """One thread a project task expands to: the id it gets and the task's settings, {n}
    filled (repeated tasks). What `Supervisor.spawn_task` starts, and what the spawn dialog
    shows before it does."""

    task: TaskSettings
    n: int | None  # the copy number of a repeated task
    thread_id: str
    prompt: str
    title: str | None
    script: list[dict[str, Any]] | None
    answer: str | None
    budget_usd: float | None  # the task's, else the project's per-thread budget

    @property
    def ref(self) -> str:
        """The thread's task reference, which `Supervisor._task_of` maps back to the task."""
        return self.task.id if self.n is None else f"{self.task.id}-{self.n}"


def shed(th: ThreadRun) -> None:
    """Lets go of an ended thread's live side: its messages, script and finished task.
    Its summary stays in the state and its transcript in the log (read on demand), so a
    long run's memory does not grow by a transcript per finished thread. What stays is what
    commands and the person still read: its id, state, cascade, tree and workspace (where
    its work is)."""
    th.conversation = None
    # Emptied in place: new empty containers would cost as much as the ones let go.
    th.messages.clear()
    th.script = None
    th.task = None
    th.pending.clear()
    th.interrupted.clear()
    th.recent_calls.clear()
    th.guidance.clear()
    th.items.clear()
    th.collected.clear()
    th.escalation = None
    th.reservation = None


def new_session_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def fill(value: Any, n: int | None) -> Any:
    """Replaces {n} in every string of a scripted value (repeat tasks)."""
    if n is None:
        return value
    if isinstance(value, str):
        return value.replace("{n}", str(n))
    if isinstance(value, list):
        return [fill(v, n) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, n) for k, v in value.items()}
    return value


def id_number(value: Any) -> int:
    """12 for an id like "c12" or "i12" (0 for anything else)."""
    text = str(value or "")
    return int(text[1:]) if text[1:].isdigit() else 0


def highest_number(events: Iterable[Event], kind: EventKind, key: str) -> int:
    """The highest number among ids like "c12" the log used for `key` of `kind` events, so
    new ids continue after it and never reuse one."""
    return max((id_number(e.payload.get(key)) for e in events if e.kind is kind), default=0)
