"""A few threads that spawn direct starts one after another, fed through a queue.

In a burst of starts the kernel's clone and exec (about a millisecond each,
serialised) and the GIL set the pace. anyio's worker threads hand every call
over through a Python condition and a capacity limiter, and back; in a burst of
a thousand starts that costs more GIL time than the spawns' own Python. Here a
start costs one put on a C queue and one call_soon_threadsafe. The reconciler
runs on anyio's asyncio backend, whose loop the results are handed back to.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, TypeVar

import anyio

T = TypeVar("T")
R = TypeVar("R")


class SpawnThreads:
    """`count` threads taking spawns from one queue, started on first use."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    async def run(self, spawn: Callable[[T], R], arg: T) -> R:
        """What `spawn(arg)` returns or raises, run in one of the threads.

        Shielded from cancellation: a child once spawned must reach the caller.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        while len(self._threads) < self._count:
            thread = threading.Thread(target=self._work, name="spawn", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._queue.put((spawn, arg, loop, future))
        with anyio.CancelScope(shield=True):
            return await future

    def close(self) -> None:
        """Let the threads finish the spawns queued and end."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            spawn, arg, loop, future = item
            try:
                result, error = spawn(arg), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller as raised
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits the result any more


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return  # the event loop is shutting down and cancelled every task
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
