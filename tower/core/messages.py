"""A thread's model messages, as a projection of its events.

What a model is sent is decided in one place: `Conversation.apply` folds a thread's events
into its messages. The live loop's conversation is fed each event of its thread as it is
emitted (the supervisor routes them), and resume folds the recorded events the same way, so
a resumed thread continues the very conversation it had, never a reconstruction that drifts
from it. (Before, the live loop and resume built messages each its own way; a text answer
that failed its check lost its note on resume.) The events are the redacted ones, so a
secret tower knows never reaches a model's context through the conversation either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tower.core import compaction
from tower.core import payloads as pl
from tower.core.check import CHECK_FAILED
from tower.core.events import Event, EventKind

# The kinds that change a conversation; the rest are skipped without decoding.
KINDS = frozenset(
    {
        EventKind.LLM_STARTED,
        EventKind.LLM_FINISHED,
        EventKind.LLM_CACHED,
        EventKind.TOOL_RESULT,
        EventKind.CHECKED,
        EventKind.COMPACTED,
    }
)


def opening(system_prompt: str, prompt: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]


def guidance(note: str) -> dict[str, Any]:
    """The person's words (a reply, a comment), as the model reads them."""
    return {"role": "user", "content": f"Message from the human orchestrator: {note}"}


def check_note(detail: str) -> str:
    return f"{CHECK_FAILED}: {detail}. Work on from here and give a corrected answer."


class Conversation:
    """The messages of one thread, folded from its events."""

    def __init__(self, messages: list[dict[str, Any]] | None = None) -> None:
        self.messages: list[dict[str, Any]] = messages if messages is not None else []
        self._answered_in_text = False  # the last turn was text: a failed check answers it

    def apply(self, ev: Event) -> None:
        if ev.kind not in KINDS:
            return
        p = pl.payload_of(ev)
        if isinstance(p, pl.LlmStarted):
            # The guidance a call carried was sent with it, before its reply.
            self.messages.extend(guidance(note) for note in p.guidance)
        elif isinstance(p, pl.LlmFinished | pl.LlmCached):
            if isinstance(p, pl.LlmCached):  # the call and its reply in one event
                self.messages.extend(guidance(note) for note in p.guidance)
            msg: dict[str, Any] = {"role": "assistant", "content": p.text or None}
            if p.tool_calls:
                msg["tool_calls"] = p.tool_calls
            self.messages.append(msg)
            self._answered_in_text = not p.tool_calls
        elif isinstance(p, pl.ToolResult):
            self.messages.append({"role": "tool", "tool_call_id": p.call_id, "content": p.result})
        elif isinstance(p, pl.Compacted):
            compaction.apply_fold(self.messages, p.folded, p.mode, p.summary)
        elif isinstance(p, pl.Checked) and not p.passed and self._answered_in_text:
            # A check on a `finish` call answers in the call's result; on a text answer, so.
            self.messages.append({"role": "user", "content": check_note(p.detail)})
            self._answered_in_text = False


def spawned_conversation(spawned: dict[str, Any], system_prompts: dict[str, str]) -> Conversation:
    """A thread's conversation as its THREAD_SPAWNED payload opens it (its agent's system
    prompt, then its task prompt): where the live loop, resume and `of_thread` all start."""
    system = system_prompts.get(str(spawned["agent"]), "")
    return Conversation(opening(system, str(spawned.get("prompt", spawned.get("title", "")))))


def of_thread(
    events: Iterable[Event], tid: str, system_prompts: dict[str, str]
) -> list[dict[str, Any]]:
    """The messages a thread's model was last sent, folded from the log: an ended thread
    keeps no messages in memory (the log has them), so its transcript is read on demand."""
    conv: Conversation | None = None
    for ev in events:
        if ev.thread != tid:
            continue
        if ev.kind is EventKind.THREAD_SPAWNED:
            conv = spawned_conversation(ev.payload, system_prompts)
        elif conv is not None:
            conv.apply(ev)
    return conv.messages if conv is not None else []
