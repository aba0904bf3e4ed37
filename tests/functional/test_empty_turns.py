"""Empty turns (no text, no tool call), as weak real models produce them: never an answer.

The first empty reply is a failed step: tower nudges the model once (a recorded comment the
next call carries). A second in a row is a trouble that escalates to the next model of the
cascade, or to the human when there is none; headless, that ends the thread `failed` with a
readable reason. Driven by scripted sim models: a script step with neither `say` nor `tool`
streams an empty completion through litellm like any provider would.
"""

from __future__ import annotations

from tests.conftest import ended
from tests.functional.test_escalation import LiveFactory, project
from tower.core.agent import EMPTY_NUDGE
from tower.core.events import EventKind, ThreadState


def script(*steps: str) -> str:
    body = "".join(f"\n[[tasks.script]]\n{s}\n" for s in steps)
    return f"""
[[tasks]]
id = "t"
agent = "a"
prompt = "Say something useful."
{body}"""


EMPTY = "say = ''"
FINISH = 'tool = "finish"\nargs = { answer = "a real answer" }'


async def test_one_empty_reply_is_nudged_and_never_taken_as_the_answer(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(project(script(EMPTY, FINISH)))
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.DONE and view.answer == "a real answer"
    comments = live.kinds("t", EventKind.COMMENT)
    assert [c.payload for c in comments] == [{"text": EMPTY_NUDGE, "by": "tower"}]
    # The nudge reached the model's next call, and nothing was checked against "".
    calls = live.kinds("t", EventKind.LLM_STARTED)
    assert len(calls) == 2 and calls[1].payload.get("guidance") == [EMPTY_NUDGE]
    assert not live.kinds("t", EventKind.CHECKED)
    assert live.view("t").escalations == 0


async def test_two_empty_replies_escalate_to_the_next_model(live_factory: LiveFactory) -> None:
    live = await live_factory(project(script(EMPTY, EMPTY, FINISH)))
    await live.waiter.until(ended(live, "t"))
    (esc,) = live.kinds("t", EventKind.ESCALATED)
    assert esc.payload["from_model"] == "sim/small" and esc.payload["to_model"] == "sim/large"
    assert esc.payload["trigger"].startswith("empty replies: sim/small returned no text")
    assert live.view("t").state is ThreadState.DONE
    assert live.view("t").answer != ""


async def test_empty_replies_with_no_model_left_end_with_a_readable_reason_headless(
    live_factory: LiveFactory,
) -> None:
    live = await live_factory(
        project(script(EMPTY, EMPTY, EMPTY, EMPTY), cascade=("sim/small",)), approve="all"
    )
    await live.waiter.until(ended(live, "t"))
    view = live.view("t")
    assert view.state is ThreadState.FAILED
    assert "empty replies" in view.reason and "no stronger model left" in view.reason
    assert view.answer in (None, "")
    opened = live.kinds("t", EventKind.INBOX_OPENED)
    assert [o.payload["kind"] for o in opened] == ["escalation"]
