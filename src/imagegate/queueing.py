"""A first-in, first-out concurrency limit that can say where a waiter stands.

Each engine gets one, so "queued, position 3" in a chat stream is the truth: the number of jobs ahead of this
one that have not started yet. The line has a length limit: every waiter keeps its request (up to 16 input images)
in memory, so a burst must be turned away rather than queued until the process runs out of memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import AsyncIterator

from imagegate.errors import EngineOverloaded


_EVERY_MOVE = 50  # waiters this near the front see every move of the queue
_FAR_STEP = 25  # those further back, every 25th place


class _Waiter:
    __slots__ = ("granted", "changed", "position")

    def __init__(self, position: int) -> None:
        self.granted = False
        self.changed = asyncio.Event()
        self.position = position  # 1 = next


class FifoLimiter:
    def __init__(self, limit: int, max_waiting: int | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if max_waiting is not None and max_waiting < 0:
            raise ValueError("max_waiting must be at least 0")
        self.limit = limit
        self.max_waiting = max_waiting  # None: no limit
        self.active = 0
        self._queue: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def check_room(self) -> None:
        """Raise :class:`EngineOverloaded` if a new caller would have to wait and the line is full."""
        if self.max_waiting is None or len(self._queue) < self.max_waiting:
            return
        if self.active < self.limit and not self._queue:
            return
        raise EngineOverloaded(
            f"The engine is overloaded: {self.active} request(s) running and {len(self._queue)} waiting, "
            "the most this server queues. Nothing was charged; try again shortly.",
            headers={"retry-after": "2"},
        )

    async def acquire(self) -> AsyncIterator[int]:
        """Yield this caller's queue position (1 = next) each time it changes; return once a slot is held.
        Raises :class:`EngineOverloaded` at once, holding nothing, when the line is full.

        The caller must call :meth:`release` exactly once after the iteration finishes normally.
        """
        if self.active < self.limit and not self._queue:
            self.active += 1
            return
        self.check_room()
        waiter = _Waiter(len(self._queue) + 1)
        self._queue.append(waiter)
        try:
            last = -1
            while not waiter.granted:
                if waiter.position != last:
                    last = waiter.position
                    yield last
                waiter.changed.clear()
                await waiter.changed.wait()
        except BaseException:
            if waiter.granted:
                self.release()
            else:
                self._queue.remove(waiter)
                self._notify()
            raise

    def resize(self, limit: int) -> None:
        """A new limit; a larger one admits waiters at once, a smaller one takes effect as jobs finish."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._grant()

    def release(self) -> None:
        self.active -= 1
        self._grant()

    def _grant(self) -> None:
        while self._queue and self.active < self.limit:
            waiter = self._queue.popleft()
            waiter.granted = True
            self.active += 1
            waiter.changed.set()
        self._notify()

    def _notify(self) -> None:
        # Positions are worked out here, once for everyone, and only waiters near the front, or at every 25th
        # place further back, are woken to report theirs: each waiter looking itself up on every move made
        # draining a queue of 2,000 take seconds of event loop.
        for position, waiter in enumerate(self._queue, 1):
            if waiter.position != position:
                waiter.position = position
                if position <= _EVERY_MOVE or position % _FAR_STEP == 0:
                    waiter.changed.set()
