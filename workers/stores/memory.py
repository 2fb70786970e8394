"""The in-process idempotency store: for tests and the memory broker, whose messages
do not outlive the process either."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

from mailbag.workers.stores import Claim, IdempotencyStore


class MemoryStore(IdempotencyStore):
    #: how often expired records are swept out, in seconds
    SWEEP_EVERY = 60.0

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: key -> (token, outcome or None while running, expires at)
        self.records: dict[str, tuple[str, str | None, float]] = {}
        self._tokens = itertools.count()
        self._next_sweep = clock() + self.SWEEP_EVERY

    async def claim(self, key: str, lease: float) -> Claim:
        now = self.clock()
        if now >= self._next_sweep:
            self.sweep()
            self._next_sweep = now + self.SWEEP_EVERY
        record = self.records.get(key)
        if record is None or record[2] <= now:
            token = str(next(self._tokens))  # unique within the process, which is all this store spans
            self.records[key] = (token, None, now + lease)
            return Claim("claimed", token)
        token, outcome, expires = record
        if outcome is not None:
            return Claim("done", outcome=outcome)
        return Claim("busy", retry_in=expires - now)

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        record = self.records.get(key)
        if record is not None and record[0] == token:
            self.records[key] = (token, outcome, self.clock() + ttl)

    async def release(self, key: str, token: str) -> None:
        record = self.records.get(key)
        if record is not None and record[0] == token:
            del self.records[key]

    async def extend(self, key: str, token: str, lease: float) -> bool:
        record = self.records.get(key)
        if record is None or record[0] != token or record[1] is not None:
            return False
        self.records[key] = (token, None, self.clock() + lease)
        return True

    def sweep(self) -> int:
        """Forget expired records; returns how many."""
        now = self.clock()
        expired = [k for k, (_, _, until) in self.records.items() if until <= now]
        for k in expired:
            del self.records[k]
        return len(expired)


async def open_store(url: str) -> MemoryStore:
    return MemoryStore()
