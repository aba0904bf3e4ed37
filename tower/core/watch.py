"""Watching files with watchfiles: one file (tower.toml, keys.toml) or a folder's files.

In the core because the fleet's service reloads its own tower.toml (core/service.py) and
the TUI watches the same way (its themes, its keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from watchfiles import Change, awatch

FileCallback = Callable[[Path], Awaitable[object] | object]


async def run_callback(callback: Callable[..., Any], *args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


async def watch_paths(
    paths: Sequence[Path],
    watch_filter: Callable[[Change, str], bool],
    on_batch: Callable[[], Awaitable[None]],
    stop_event: asyncio.Event | None,
    ready: asyncio.Event | None,
    options: dict[str, Any],
) -> None:
    """Run awatch over `paths` (non-recursive) and await on_batch() for every batch of
    changes that passes the filter, until stop_event is set or the task is cancelled."""
    changes = awatch(
        *paths,
        watch_filter=watch_filter,
        stop_event=stop_event,
        recursive=False,
        **options,
    )
    pending = asyncio.ensure_future(anext(changes))
    try:
        # awatch registers its watches synchronously, before its first await: once that
        # task has taken one step, every later change is seen.
        await asyncio.sleep(0)
        if ready is not None:
            ready.set()
        while True:
            try:
                await pending
            except StopAsyncIteration:
                return
            await on_batch()
            pending = asyncio.ensure_future(anext(changes))
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await pending
        await changes.aclose()


async def watch_file(
    path: str | Path,
    on_change: FileCallback,
    stop_event: asyncio.Event | None = None,
    *,
    ready: asyncio.Event | None = None,
    debounce: int = 1600,
    step: int = 50,
    force_polling: bool | None = None,
    poll_delay_ms: int = 300,
) -> None:
    """Watch one file and call `on_change(path)` (awaited if it returns an awaitable) after
    each batch of changes to it: written, replaced (editors save by rename) or deleted.
    Watches the parent folder, so changes to sibling files are ignored. Raises
    FileNotFoundError if the parent folder does not exist. Runs until `stop_event` is set
    or the task is cancelled; `ready` (optional) is set once changes are being watched."""
    target = Path(path).absolute()
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder to watch for {target.name}")

    def is_target(_change: Change, changed: str) -> bool:
        return Path(changed).name == target.name

    async def fire() -> None:
        await run_callback(on_change, target)

    options = dict(
        debounce=debounce, step=step, force_polling=force_polling, poll_delay_ms=poll_delay_ms
    )
    await watch_paths([folder], is_target, fire, stop_event, ready, options)
