"""The core's own thread and event loop, so the screen never queues behind agent work.

With hundreds of streaming threads the core's loop runs thousands of callbacks a second; a
key press sharing that loop waits behind them (p95 over 150 ms at 500 threads). On its own
loop the UI only waits for the GIL, a few milliseconds at most. Commands cross over with
`run`/`call`; events come back through the bus's subscriber, which only queues them for
the UI's next tick.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class CoreThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="tower-core", daemon=True)
        self._started = threading.Event()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        # Whatever is still pending when the loop stops gets a clean cancellation.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()

    def run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Runs a coroutine on the core loop; await the result from the UI's loop."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """Runs a command on the core loop: a plain function (a supervisor command), or one
        that returns an awaitable (a remote fleet's command), which is awaited there."""

        async def run() -> Any:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

        return self.run(run())

    def stop(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
