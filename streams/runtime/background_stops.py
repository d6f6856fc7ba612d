"""Clients stopped in the background: a producer let go (a partition moved away, an outputs producer
replaced in a rewind) may take seconds to flush or fail, which the batch that let it go must not
wait for; ``wait`` is for the service's own stop, so nothing is left running after it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class BackgroundStops:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, stopping: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(stopping)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
