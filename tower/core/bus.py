"""The event bus: numbers each event, redacts secrets, folds it into the state, logs it.

Emitting is synchronous and never waits on I/O: the store's writer drains its queue in the
background. Subscribers (the headless printer, auto-approval, later the UI) see every event
after the state already reflects it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tower.core.events import Event, EventKind, encode_payload
from tower.core.payloads import Payload
from tower.core.secrets import (
    KEY_SHAPES,
    install_log_redaction,
    redact_partial_tail,
    safe_stream_cut,
    secrets_for_project,
    secrets_from_env,
)
from tower.core.state import TowerState, apply, snapshot_of
from tower.core.store import Store

log = logging.getLogger("tower.bus")

Subscriber = Callable[[Event], None]

# A state snapshot goes to the log every this many events (seeking cost is bounded by it).
SNAPSHOT_EVERY = 5000


def snapshot_gap(threads: int) -> int:
    """Events until the next snapshot. A snapshot holds every thread, so at a fixed gap a
    long run's snapshots would cost time and space growing with the square of its length
    (100,000 tasks: gigabytes). Spaced by the thread count, they cost a few bytes per event
    however large the run, and a seek folds at most that many events."""
    return max(SNAPSHOT_EVERY, 4 * threads)


class Bus:
    def __init__(
        self,
        store: Store | None = None,
        *,
        clock: Callable[[], float] = time.time,
        secrets: dict[str, str] | None = None,
        project: Any = None,
    ) -> None:
        """`project`: its models' `api_key_env` variables are secrets whatever their names."""
        self.state = TowerState()
        self.store = store
        self.seq = 0
        self._next_snapshot = SNAPSHOT_EVERY
        self._clock = clock
        if secrets is None:
            secrets = secrets_from_env() if project is None else secrets_for_project(project)
        # A secret can also appear JSON-escaped in a payload (a quote or backslash in it).
        forms = dict(secrets)
        for value, name in secrets.items():
            forms.setdefault(encode_payload(value)[1:-1], name)
        self._secrets = dict(sorted(forms.items(), key=lambda kv: -len(kv[0])))  # longest first
        # Streamed text held back per call: the start of what may be a secret split across
        # deltas, released (redacted) with the next delta or when the call ends.
        self._held: dict[str, tuple[str | None, str]] = {}
        install_log_redaction()
        self._subscribers: list[Subscriber] = []
        # Held while the reducer changes the state; a reader on another thread (the TUI)
        # holds it while it walks the state, so it never sees a half-applied event.
        self.lock = threading.RLock()  # re-entrant: the UI nests reads inside its tick

    def add_secrets_of(self, project: Any) -> None:
        """A reloaded project's new `api_key_env` variables become secrets from now on."""
        merged = dict(self._secrets)
        for value, name in secrets_for_project(project).items():
            for form in (value, encode_payload(value)[1:-1]):
                merged.setdefault(form, name)
        self._secrets = dict(sorted(merged.items(), key=lambda kv: -len(kv[0])))

    def now(self) -> float:
        return self._clock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn)

    def _redact(self, text: str) -> str:
        for value, name in self._secrets.items():
            if value in text:
                text = text.replace(value, f"[redacted {name}]")
        # One regex pass (~3 µs an event); a substring pre-check saved nothing, since "sk-"
        # is in every "task-" id.
        text = KEY_SHAPES.sub("[redacted key]", text)
        return text

    def emit(self, payload: Payload, thread: str | None = None, /) -> Event:
        """Records one typed event: `bus.emit(ThreadSpawned(...), tid)`. Secrets are
        redacted first (also across streamed deltas). Readers get the typed view decoded
        from the stored payload, never the object given: the live fold and a replay of the
        log then see the very same values (a tuple given is a list read back)."""
        kind = payload.KIND
        data = payload.to_dict()
        call = str(data.get("call"))
        if kind is EventKind.LLM_DELTA and isinstance(data.get("text"), str):
            # Hold back what may be the start of a secret until the next delta completes it.
            _, held = self._held.pop(call, (None, ""))
            text = held + data["text"]
            cut = safe_stream_cut(text, self._secrets)
            if cut < len(text):
                self._held[call] = (thread, text[cut:])
            data["text"] = text[:cut]
        elif self._held:
            if kind in (EventKind.LLM_FINISHED, EventKind.LLM_FAILED) and call in self._held:
                self._release(call)
            elif kind is EventKind.LLM_STARTED:  # a call that ended without a word
                for old in [c for c, (t, _) in self._held.items() if t == thread]:
                    self._release(old)
        if kind is EventKind.LLM_FINISHED and isinstance(data.get("text"), str):
            # A reply cut off inside a key ends with its first characters.
            data["text"] = redact_partial_tail(data["text"], self._secrets)
        return self._emit(kind, thread, data)

    def _release(self, call: str) -> None:
        """The held-back end of a call's stream, as its last delta."""
        thread, held = self._held.pop(call)
        text = redact_partial_tail(held, self._secrets)
        if text:
            self._emit(EventKind.LLM_DELTA, thread, {"call": call, "text": text})

    def _emit(self, kind: EventKind, thread: str | None, payload: dict[str, Any]) -> Event:
        self.seq += 1
        text = encode_payload(payload)
        redacted = self._redact(text)
        if not redacted.isascii():
            # A lone surrogate (a model can send "\ud800" in JSON) cannot be stored as UTF-8.
            try:
                redacted.encode("utf-8")
            except UnicodeEncodeError:
                redacted = redacted.encode("utf-8", "replace").decode("utf-8")
        if redacted != text:
            text = redacted
            payload = json.loads(text)
        ev = Event(self.seq, self._clock(), kind, thread, payload)
        with self.lock:
            apply(self.state, ev)
        if self.store is not None:
            self.store.append(ev, text)
            if self.seq >= self._next_snapshot:
                # Replay seeks from the nearest snapshot instead of folding from event 1.
                with self.lock:
                    snapshot = json.dumps(snapshot_of(self.state), separators=(",", ":"))
                self.store.append_snapshot(self.seq, snapshot)
                self._next_snapshot = self.seq + snapshot_gap(len(self.state.threads))
        for fn in self._subscribers:
            try:
                fn(ev)
            except Exception:  # a broken view must not stop the agents
                log.exception("event subscriber failed on %s", kind)
        return ev
