"""Replay pacing: at most `rate` messages a second, sent in batches no larger than
what one second allows, so a replay never floods the queue it feeds."""

from __future__ import annotations

from aiolimiter import AsyncLimiter


class Pace:
    """`await pace.wait()` once per message; `batch` is the largest batch to send.
    Without a rate, only the batch size applies."""

    def __init__(self, rate: float | None, batch: int) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 messages per second, got {rate}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self._limiter = AsyncLimiter(1, 1 / rate) if rate else None
        self.batch = max(1, min(batch, int(rate))) if rate else batch

    async def wait(self) -> None:
        if self._limiter is not None:
            await self._limiter.acquire()
