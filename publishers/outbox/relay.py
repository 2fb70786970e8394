"""The relay: publishes what the outbox holds, in order per key, marks rows sent after
the broker's confirm, backs off when the broker fails, and prunes old sent rows.

Crash-safe by construction: a row is marked sent only after its publish was confirmed,
so a relay killed at any point leaves every unconfirmed row pending for the next run;
what it published but could not mark goes out again with the same message id.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mailbag.broker.errors import ConfigurationError
from mailbag.publishers.errors import CircuitOpen, PublishError
from mailbag.publishers.outbox.base import Claim, Outbox
from mailbag.publishers.publisher import Publisher

log = logging.getLogger("mailbag.outbox")


@dataclass(frozen=True)
class RelaySettings:
    """`batch_size` rows per claim; `poll_interval`: the longest wait for new rows when
    nothing wakes the relay. A failed row waits `initial_backoff` seconds, doubling per
    failure up to `max_backoff`. Rows sent longer than `retention` seconds ago are
    deleted every `prune_interval` seconds."""

    batch_size: int = 100
    poll_interval: float = 1.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    retention: float = 7 * 24 * 3600.0
    prune_interval: float = 300.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.poll_interval <= 0 or self.retention < 0 or self.prune_interval <= 0:
            raise ConfigurationError("poll_interval and prune_interval must be > 0, retention >= 0")
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise ConfigurationError("backoff must satisfy 0 < initial_backoff <= max_backoff")

    def backoff(self, failures: int) -> float:
        return min(self.max_backoff, self.initial_backoff * 2 ** max(0, failures - 1))


class Relay:
    """Moves rows from `outbox` to the broker through `publisher`.

        async with Relay(outbox, publisher):   # runs as a task until the block ends
            ...

    or `await relay.run()` until `stop()`. Several relays may share a PostgreSQL outbox."""

    def __init__(self, outbox: Outbox, publisher: Publisher, settings: RelaySettings | None = None) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.settings = settings or RelaySettings()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    async def run_once(self) -> int:
        """Claim one batch and publish it; returns how many rows were marked sent.
        Stops at the first failed publish so no row overtakes an earlier one of its key."""
        async with self.outbox.claim(self.settings.batch_size) as claim:
            if not claim.rows:
                return 0
            sent = await self._publish(claim)
        self._failures = 0 if sent == len(claim.rows) else self._failures + 1
        return sent

    async def _publish(self, claim: Claim) -> int:
        try:
            await self.publisher.send([r.message for r in claim.rows])
        except PublishError as exc:
            if exc.sent:
                await claim.sent(exc.sent)
            failed = set(exc.failed)
            attempts = max(r.attempts for r in claim.rows if r.message.id in failed)
            retry_in = exc.retry_after if isinstance(exc, CircuitOpen) else self.settings.backoff(attempts + 1)
            await claim.failed(exc.failed, str(exc), retry_in)
            log.warning("outbox publish failed, %d row(s) retry in %.1fs: %s", len(failed), retry_in, exc)
            return len(exc.sent)
        await claim.sent([r.message.id for r in claim.rows])
        return len(claim.rows)

    async def drain(self) -> int:
        """Publish until no row is due; returns how many were sent (for `--once` and tests)."""
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def run(self) -> None:
        """Relay until `stop()`: publish while rows are due, otherwise wait for a
        notification or the poll interval; prune on schedule. A database or broker
        fault is logged and retried with backoff; it never ends the loop."""
        s = self.settings
        await self.outbox.setup()
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while not self._stopping.is_set():
            try:
                if loop.time() >= next_prune:
                    pruned = await self.outbox.prune(s.retention)
                    if pruned:
                        log.info("pruned %d sent outbox row(s)", pruned)
                    next_prune = loop.time() + s.prune_interval
                sent = await self.run_once()
                if self._failures:
                    await self._pause(s.backoff(self._failures))
                elif not sent:
                    await self._idle(s.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: keep trying
                self._failures += 1
                log.error("outbox relay error, retrying: %s", exc)
                await self._pause(s.backoff(self._failures))

    async def _idle(self, timeout: float) -> None:
        waiter = asyncio.ensure_future(self.outbox.wait_for_rows(timeout))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stopping):
                task.cancel()
            await asyncio.gather(waiter, stopping, return_exceptions=True)
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    def stop(self) -> None:
        """End `run()` after the batch in hand is settled."""
        self._stopping.set()

    def start(self) -> asyncio.Task[None]:
        """Run as a task of the current event loop."""
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name="outbox-relay")
        return self._task

    async def __aenter__(self) -> Relay:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        if self._task is not None:
            await self._task
