"""Clocks for delays, timeouts and circuit resets: the real one, and a manual one
whose time moves only when told (tests, and `mailbag.testing`'s virtual time)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""

    async def sleep_until(self, deadline: float) -> None:
        """Return once `now() >= deadline`."""

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[asyncio.Timeout]:
        """`asyncio.timeout(seconds)` measured on this clock (None: no limit): the block is cancelled and
        raises `TimeoutError` once `seconds` have passed; `expired()` tells it was this."""


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    def timeout(self, seconds: float | None) -> asyncio.Timeout:
        return asyncio.timeout(seconds)


class ManualClock:
    """Time moves only when `advance` is called, so backoff and visibility tests run
    instantly and deterministically."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[asyncio.Timeout]:
        return asyncio.timeout(None) if seconds is None else self._timeout(seconds)

    @contextlib.asynccontextmanager
    async def _timeout(self, seconds: float) -> AsyncIterator[asyncio.Timeout]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as scope:
            inside = True

            def expire(alarm: asyncio.Future[None]) -> None:
                if inside and not alarm.cancelled():
                    scope.reschedule(loop.time())

            alarm: asyncio.Future[None] = loop.create_future()
            alarm.add_done_callback(expire)
            heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), alarm))
            try:
                yield scope
            finally:
                inside = False
                alarm.cancel()

    def next_deadline(self) -> float | None:
        """The earliest time something waits for (a sleep or a timeout), or None."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward and let everything that was due run."""
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        # let woken tasks run before the caller looks at the result
        for _ in range(5):
            await asyncio.sleep(0)
