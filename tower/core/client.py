"""A view's side of the service protocol (tower/core/wire.py): connect, fold, command.

`ServiceClient.connect` says hello, receives the snapshot and from then on folds every
event it reads with the same reducer as the service, so `client.state` is the service's
state as of the last event read. `command` sends one command and returns its result (events
that arrive meanwhile are folded on the way); a refusal is a ServiceError with the
service's one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from tower.core import wire
from tower.core.state import TowerState, apply, state_from_dict
from tower.core.wire import ServiceError


class ServiceClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: str,
        state: TowerState,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.session = session
        self.state = state
        self.resyncs = 0  # fresh snapshots received because this view fell behind
        self._ids = 0

    @classmethod
    async def connect(cls, path: Path, client: str = "cli", watch: bool = True) -> ServiceClient:
        """`watch` False: commands only; the state stays empty and no event arrives."""
        reader, writer, msg = await handshake(path, client, watch)
        state = state_from_dict(msg["snapshot"]) if watch else TowerState()
        return cls(reader, writer, str(msg["session"]), state)

    def fold(self, msg: dict[str, Any]) -> bool:
        """Folds an event or a resync; False for any other message."""
        if msg["type"] == "event":
            apply(self.state, wire.event_of(msg))
            return True
        if msg["type"] == "resync":
            self.state = state_from_dict(msg["snapshot"])
            self.resyncs += 1
            return True
        return False

    async def next_message(self) -> dict[str, Any]:
        """The next message; events and resyncs are folded before it is returned."""
        msg = await _read(self.reader)
        self.fold(msg)
        return msg

    async def command(self, verb: str, **args: Any) -> Any:
        self._ids += 1
        cid = self._ids
        self.writer.write(wire.encode(wire.command(cid, verb, **args)))
        await self.writer.drain()
        while True:
            msg = await self.next_message()
            if msg["type"] == "reply" and msg.get("id") == cid:
                return msg.get("result")
            if msg["type"] == "error" and msg.get("id") in (cid, None):
                raise ServiceError(str(msg.get("message", "")))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def handshake(
    path: Path, client: str, watch: bool = True
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]]:
    """Connects and says hello; the service's `welcome` (ServiceError if it refuses, or
    speaks another version, or is not there)."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=wire.MAX_LINE)
    except OSError as exc:
        raise ServiceError(f"{path}: no service answers ({exc.strerror or exc})") from None
    writer.write(wire.encode(wire.hello(client, watch)))
    await writer.drain()
    try:
        msg = await _read(reader)
    except ServiceError:
        writer.close()
        raise
    if msg["type"] == "error":
        writer.close()
        raise ServiceError(f"the service refused: {msg.get('message', '')}")
    if msg["type"] != "welcome":
        writer.close()
        raise ServiceError(f"the service said {msg['type']!r} instead of welcome")
    return reader, writer, msg


async def _read(reader: asyncio.StreamReader) -> dict[str, Any]:
    try:
        line = await reader.readline()
    except (ConnectionError, ValueError) as exc:
        raise ServiceError(f"the service connection broke ({exc})") from None
    if not line:
        raise ServiceError("the service closed the connection")
    try:
        return wire.decode(line)
    except wire.WireError as exc:
        raise ServiceError(str(exc)) from None
