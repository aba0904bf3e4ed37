"""The service's wire format: typed messages as JSON lines over a Unix socket.

A view says `hello` with the protocol version it speaks; the service answers `welcome`
with the session, a snapshot of the reduced state and the sequence number it stands at,
then streams every later `event` (the log's own typed events, as `Event.to_dict` writes
them), so the view folds them with the same reducer and holds the same state. Commands
carry an id; each gets one `reply` (with a result) or `error` (one line). A view that falls
behind gets a `resync`: a fresh snapshot, then the live events after it. Besides events, a
view gets a `figures` message once a second (the call gate's counters) and a `notice` now
and then (tower.toml reloaded by the service, or an edit of it refused).

Pure: encoding, decoding and checking, no I/O. Every message is one JSON object on one
line, at most MAX_LINE bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tower.core.events import Event, EventKind

PROTOCOL = 1
MAX_LINE = 64 * 1024 * 1024  # a snapshot of a large session is one line


class WireError(Exception):
    """A message that breaks the protocol; the text is one line saying how."""


class ServiceError(Exception):
    """A service that cannot start or be reached, or refused a command; one line."""


# The commands a view may send, and the arguments each requires (others are optional).
COMMANDS: dict[str, tuple[str, ...]] = {
    "state": (),  # the run summary (and the state's counts)
    "inbox": (),  # the open items
    "approve": ("item",),
    "deny": ("item",),
    "reply": ("target", "text"),
    "spawn": ("prompt",),
    "pause": ("thread",),
    "resume": ("thread",),
    "kill": ("thread",),
    "raise_budget": (),
    "escalate": ("thread",),
    "pause_all": (),
    "resume_all": (),
    "pause_tree": ("thread",),
    "resume_tree": ("thread",),
    "kill_tree": ("thread",),
    "escalate_tree": ("thread",),
    "spawn_task": ("task",),
    "grant": ("tool",),
    "revoke": ("rule",),
    "thread_events": ("thread",),  # a thread's recorded events (a view's transcript)
    "down": (),  # stop the fleet: the service ends its session and exits
}


@dataclass(frozen=True, slots=True)
class Command:
    id: int
    verb: str
    args: dict[str, Any]


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One message; WireError if it is not a JSON object with a known `type`."""
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise WireError("a message is not valid JSON") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise WireError("a message must be a JSON object with a type")
    return msg


def hello(client: str, watch: bool = True) -> dict[str, Any]:
    """`watch` False: a script's connection for commands only, sent no state and no events
    (a snapshot of a 100,000-thread run is tens of megabytes, for a `tower ls`)."""
    msg: dict[str, Any] = {"type": "hello", "version": PROTOCOL, "client": client}
    if not watch:
        msg["watch"] = False
    return msg


def check_hello(msg: dict[str, Any]) -> None:
    """The first message of a view; WireError names a version this service cannot speak."""
    if msg.get("type") != "hello":
        raise WireError(f"expected hello first, got {msg.get('type')!r}")
    version = msg.get("version")
    if version != PROTOCOL:
        raise WireError(
            f"protocol version {version!r} is not spoken here (this tower speaks "
            f"{PROTOCOL}); use the same tower version for the service and its views"
        )


def welcome(session: str, snapshot: dict[str, Any], seq: int, **info: Any) -> dict[str, Any]:
    return {
        "type": "welcome",
        "version": PROTOCOL,
        "session": session,
        "seq": seq,
        "snapshot": snapshot,
        **info,
    }


def resync(snapshot: dict[str, Any], seq: int) -> dict[str, Any]:
    return {"type": "resync", "seq": seq, "snapshot": snapshot}


def notice(
    title: str, message: str, severity: str = "information", reloaded: bool = False
) -> dict[str, Any]:
    """Something a view shows its person once (a reloaded tower.toml, a bad edit of it);
    not an event of the session (the log does not keep it). `reloaded`: the fleet now runs
    the edited tower.toml (a view reads its agents and tasks again)."""
    return {
        "type": "notice",
        "title": title,
        "message": message,
        "severity": severity,
        "reloaded": reloaded,
    }


def figures(
    in_flight: int, waiting: int, lag_s: float, workers: int = 0, worker_slots: int = 0
) -> dict[str, Any]:
    """The call gate's counters, sent to each view once a second (core/control.CallFigures)."""
    msg: dict[str, Any] = {
        "type": "figures",
        "in_flight": in_flight,
        "waiting": waiting,
        "lag_s": lag_s,
    }
    if worker_slots:
        msg["workers"], msg["worker_slots"] = workers, worker_slots
    return msg


def event(ev: Event) -> dict[str, Any]:
    return {"type": "event", **ev.to_dict()}


def event_of(msg: dict[str, Any]) -> Event:
    """The Event an `event` message carries; WireError for one that is malformed."""
    try:
        return Event(
            int(msg["seq"]),
            float(msg["ts"]),
            EventKind(msg["kind"]),
            msg.get("thread"),
            dict(msg.get("payload") or {}),
        )
    except (KeyError, ValueError, TypeError):
        raise WireError("a malformed event message") from None


def command(cid: int, verb: str, **args: Any) -> dict[str, Any]:
    return {"type": "command", "id": cid, "verb": verb, "args": args}


def command_of(msg: dict[str, Any]) -> Command:
    """A checked command; WireError says what is wrong (an unknown verb, a missing
    argument), and carries no traceback."""
    cid = msg.get("id")
    if not isinstance(cid, int) or isinstance(cid, bool):
        raise WireError("a command needs an integer id")
    verb = msg.get("verb")
    if verb not in COMMANDS:
        raise WireError(f"unknown command {verb!r}; expected one of {', '.join(COMMANDS)}")
    args = msg.get("args") or {}
    if not isinstance(args, dict):
        raise WireError(f"{verb}: args must be an object")
    missing = [a for a in COMMANDS[verb] if not args.get(a)]
    if missing:
        raise WireError(f"{verb}: missing {', '.join(missing)}")
    return Command(cid, verb, args)


def reply(cid: int, result: Any = None) -> dict[str, Any]:
    return {"type": "reply", "id": cid, "result": result}


def error(cid: int | None, message: str) -> dict[str, Any]:
    return {"type": "error", "id": cid, "message": message.splitlines()[0] if message else ""}
