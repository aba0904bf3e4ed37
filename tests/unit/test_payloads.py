"""Typed payloads: what the bus writes reads back as the same object, older versions are
upcast on read (by the reducer and by the store's SQL alike), and an event written with a
type's kind-specific fields keeps them."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from tower.core import payloads as pl
from tower.core.bus import Bus
from tower.core.events import Event, EventKind
from tower.core.state import fold
from tower.core.store import DamagedLog, Store

SAMPLES: dict[Any, Any] = {str: "x", int: 3, float: 1.5, bool: True}
# Fields whose values have a shape of their own: a member of the vocabulary's enums, a rule.
ENUMS: dict[Any, dict[str, Any]] = {
    pl.RuleGranted: {"rule": {"id": "g1", "action": "allow", "tool": "read_file"}},
    pl.ThreadStateChanged: {"state": "running"},
    pl.InboxOpened: {"kind": "approval"},
    pl.InboxClosed: {"resolution": "approved"},
    pl.BudgetRaised: {"scope": "session"},
    pl.SessionEnded: {"reason": "finished"},
}


def _sample(tp: Any) -> Any:
    """A value of a field's type (the first non-None member of a union)."""
    if tp in SAMPLES:
        return SAMPLES[tp]
    if tp is pl.Usage:
        return pl.Usage(prompt_tokens=5, completion_tokens=2, total_tokens=7)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in typing.get_args(tp) if a is not type(None)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return [_sample(arg)] if arg is not Any else [{"k": 1}]
    if origin is dict:
        return {"k": "v"}
    return {"any": [1, "two"]}


def _full(cls: type[pl.Payload]) -> pl.Payload:
    """A payload of this type with every field set (none left at its default)."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _sample(hints[f.name]) for f in dataclasses.fields(cls) if f.name != "extra"}
    values.update({k: v for k, v in ENUMS.get(cls, {}).items() if k in values})
    return cls(**values)


@pytest.mark.parametrize("cls", list(pl.TYPES.values()), ids=lambda c: c.__name__)
def test_every_payload_reads_back_as_written(cls: type[pl.Payload]) -> None:
    bus = Bus(None, secrets={})
    seen: list[Event] = []
    bus.subscribe(seen.append)
    sent = _full(cls)
    bus.emit(sent, "t")
    if cls is pl.LlmDelta:  # the bus holds a stream's tail back until the call ends
        bus.emit(pl.LlmFailed(call=sent.call, error="e", released_usd=0.0), "t")
        text = "".join(e.payload["text"] for e in seen if e.kind is EventKind.LLM_DELTA)
        assert text == sent.text
        return
    (ev,) = seen
    assert ev.kind is cls.KIND
    assert pl.payload_of(ev) == sent
    assert ev.payload.get("v", 1) == cls.VERSION


def test_a_field_left_at_none_is_not_written_and_reads_back_as_none() -> None:
    data = pl.InboxClosed(item="i1", resolution="approved").to_dict()
    assert data == {"item": "i1", "resolution": "approved", "by": "human"}
    back = pl.payload_of(Event(1, 0.0, EventKind.INBOX_CLOSED, "t", data))
    assert back.text is None and back.waited_s is None


def test_kind_specific_fields_travel_in_extra_and_are_stored_at_the_top() -> None:
    opened = pl.InboxOpened.of(item="i1", kind="approval", tool="write_file", args={"p": 1})
    assert opened.extra == {"tool": "write_file", "args": {"p": 1}}
    data = opened.to_dict()
    assert data["tool"] == "write_file" and data["args"] == {"p": 1}
    assert pl.payload_of(Event(1, 0.0, EventKind.INBOX_OPENED, "t", data)) == opened


def test_a_version_1_lost_call_is_upcast_on_read() -> None:
    old = Event(1, 0.0, EventKind.LLM_LOST, "t", {"usd": 0.25, "model": "m", "reason": "r"})
    typed = pl.payload_of(old)
    assert isinstance(typed, pl.LlmLost) and typed.reserved_usd == 0.25
    assert "usd" not in typed.extra  # renamed, not kept twice
    assert old.payload == {"usd": 0.25, "model": "m", "reason": "r"}  # the record is untouched
    assert pl.LlmLost(reserved_usd=0.5).to_dict()["v"] == 2


def _spawned(tid: str) -> pl.ThreadSpawned:
    return pl.ThreadSpawned(
        agent="a", task=tid, title=tid, cascade=["sim/small"], model="sim/small", priority=0
    )


def test_the_reducer_books_both_versions_of_a_lost_call() -> None:
    events = [
        Event(1, 1.0, EventKind.THREAD_SPAWNED, "a", _spawned("a").to_dict()),
        Event(2, 2.0, EventKind.THREAD_SPAWNED, "b", _spawned("b").to_dict()),
        Event(3, 3.0, EventKind.LLM_LOST, "a", {"usd": 0.25, "model": "sim/small"}),
        Event(4, 4.0, EventKind.LLM_LOST, "b", pl.LlmLost(reserved_usd=0.5).to_dict()),
    ]
    state = fold(events)
    assert state.threads["a"].lost_usd == 0.25 and state.threads["b"].lost_usd == 0.5
    assert state.budget.lost_usd == 0.75


async def test_the_session_list_sums_both_versions_of_a_lost_call(tmp_path: Path) -> None:
    """The session list aggregates in SQL over raw payloads: it must read version 1 too."""
    store = await Store.open(tmp_path / "t.db")
    try:
        await store.create_session("s", "p", str(tmp_path), 1.0, {})
        store.start_writer("s")
        old = Event(1, 1.0, EventKind.LLM_LOST, "a", {"usd": 0.25, "model": "m"})
        store.append(old)
        new = pl.LlmLost(reserved_usd=0.5, model="m").to_dict()
        store.append(Event(2, 2.0, EventKind.LLM_LOST, "b", new))
        await store.flush()
        (row,) = await store.list_sessions()
        assert row.lost_usd == pytest.approx(0.75)
    finally:
        await store.close()


async def test_a_log_with_a_version_1_lost_call_is_whole(tmp_path: Path) -> None:
    """The store's check reads raw payloads in SQL, before any upcaster: a required field
    stored under its former name is there."""
    store = await Store.open(tmp_path / "t.db")
    try:
        await store.create_session("s", "p", str(tmp_path), 1.0, {})
        store.start_writer("s")
        store.append(Event(1, 1.0, EventKind.LLM_LOST, "a", {"usd": 0.25, "model": "m"}))
        store.append(Event(2, 2.0, EventKind.LLM_LOST, "b", pl.LlmLost(reserved_usd=0.5).to_dict()))
        await store.flush()
        await store.check_log("s")  # whole: raises nothing
        store.append(Event(3, 3.0, EventKind.LLM_LOST, "c", {"model": "m"}))  # neither name
        await store.flush()
        with pytest.raises(DamagedLog, match=r"event 3 .*no field 'reserved_usd'"):
            await store.check_log("s")
    finally:
        await store.close()
