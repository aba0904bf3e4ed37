"""The one vocabulary of tower: event kinds, thread states, inbox kinds and the Event record.

Everything the tower shows is folded from these events, live and in replay, so every other
module names kinds and states through the enums here rather than through string literals.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# One shared encoder: json.dumps with options builds a new encoder on every call.
encode_payload = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


class EventKind(StrEnum):
    """What happened. Each kind's payload is a typed dataclass in payloads.py (its fields,
    defaults and version); the comments beside the members are a summary."""

    SESSION_STARTED = "session_started"  # project, project_dir, budget_usd, budget_tokens, ...
    SESSION_ENDED = "session_ended"  # reason: "finished" | "interrupted" | "quit"
    SESSION_RESUMED = "session_resumed"  # threads (ids continued), pid
    THREAD_SPAWNED = "thread_spawned"  # agent, task, title, cascade, model, priority, budgets
    THREAD_STATE = "thread_state"  # state, reason?, answer?
    # Tasks of a graph waiting, unspawned, for the threads they name to end.
    TASKS_WAITING = "tasks_waiting"  # waiting: {thread id it will get: [thread ids]}
    # The person asked a thread to pause (it does at its next checkpoint) or withdrew that.
    PAUSE_REQUESTED = "pause_requested"  # requested: bool
    LLM_STARTED = "llm_started"  # step, model, reserved_usd, reserved_tokens, call
    LLM_DELTA = "llm_delta"  # call, text (coalesced stream text)
    LLM_FINISHED = "llm_finished"  # call, step, model, text, tool_calls, usage, cost_usd, ...
    LLM_FAILED = "llm_failed"  # call, step, model, error, retryable, attempt, released_usd
    # A call answered from the response cache ([cache] responses): an identical call already
    # answered in this database; it stands for llm_started + llm_finished and costs nothing.
    LLM_CACHED = "llm_cached"  # call, step, model, key, source_session, source_seq, text, ...
    # A call a crash cut off (found at resume): the provider may have billed it, so its
    # reservation is booked as "possibly billed", apart from the known cost.
    LLM_LOST = "llm_lost"  # model, usd (its reservation), reason
    # Older tool results of a long thread folded to keep its prompt within the model's
    # context window: replaced by a summary (a cheap model's, budgeted) or elided.
    COMPACTED = "compacted"  # folded (tool call ids), mode, summary, tokens_before/after, cost
    # A batch of a lane's calls at the provider's batch API (core/batchlane.py).
    BATCH = "batch"  # batch, lane, model, status, calls, threads, provider_id, error
    TOOL_CALLED = "tool_called"  # call_id, tool, args, reason, policy, rule (why it may run)
    TOOL_RESULT = "tool_result"  # call_id, tool, ok, result
    INBOX_OPENED = "inbox_opened"  # item, kind, tool?, args?, reason, question?, cost_so_far
    INBOX_CLOSED = "inbox_closed"  # item, resolution, by, text?, args?
    ESCALATED = "escalated"  # from_model, to_model, trigger
    CHECKED = "checked"  # passed, detail, model (the task's self-check on an answer)
    BUDGET_RAISED = "budget_raised"  # scope: "session" | "thread", usd, tokens
    COMMENT = "comment"  # text, by
    POLICY_SET = "policy_set"  # policy (the project's rules, after a reload or a resume)
    RULE_GRANTED = "rule_granted"  # rule (policy.Rule.to_dict), minutes, by, item?
    RULE_ENDED = "rule_ended"  # rule (its id), reason: "expired" | "revoked"
    MCP_SERVER = "mcp_server"  # server, status: "ready" | "crashed" | "restarted" | ..., tools?


class ThreadState(StrEnum):
    """Lifecycle: queued → running ⇄ waiting ⇄ paused → done | failed | killed; a task
    whose dependency did not succeed (task graphs) ends skipped without running."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    KILLED = "killed"
    SKIPPED = "skipped"

    @property
    def ended(self) -> bool:
        return self in ENDED_STATES


ENDED_STATES = frozenset(
    {ThreadState.DONE, ThreadState.FAILED, ThreadState.KILLED, ThreadState.SKIPPED}
)


class InboxKind(StrEnum):
    """Why a thread needs the human."""

    APPROVAL = "approval"  # a tool call the policy wants approved
    QUESTION = "question"  # the agent called ask_human
    BUDGET = "budget"  # the thread could not reserve its next call
    ESCALATION = "escalation"  # handed to the human (key or last model exhausted)


class Resolution(StrEnum):
    """How an inbox item closed."""

    APPROVED = "approved"
    DENIED = "denied"
    ANSWERED = "answered"
    RAISED = "raised"
    DECLINED = "declined"
    DROPPED = "dropped"  # its thread ended (killed, failed) before a decision


@dataclass(slots=True)
class Event:
    """One immutable fact: numbered within its session, timestamped, maybe tied to a thread."""

    seq: int
    ts: float
    kind: EventKind
    thread: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    # The typed view of `payload`, decoded once (payloads.payload_of) for every reader of
    # this event: the reducer, the conversation, the transcript, the printer.
    typed: Any = field(default=None, compare=False, repr=False)

    def payload_json(self) -> str:
        return encode_payload(self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": str(self.kind),
            "thread": self.thread,
            "payload": self.payload,
        }

    @classmethod
    def from_row(cls, seq: int, ts: float, kind: str, thread: str | None, payload: str) -> Event:
        """An event from its stored row; ValueError says what is wrong with a damaged one."""
        try:
            data = json.loads(payload)
        except (TypeError, ValueError):  # JSONDecodeError and undecodable bytes alike
            raise ValueError("payload is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError("payload is not a JSON object")
        try:
            known = EventKind(kind)
        except ValueError:
            raise ValueError(f"unknown event kind {kind!r}") from None
        return cls(seq, ts, known, thread, data)
