"""Taking chosen messages out of a dead-letter queue without ever losing one.

The broker contract has no "delete this message by id", so a sweep consumes the DLQ:
each chosen delivery is first acted on (replay: sent elsewhere, confirmed) and only
then acked; every delivery not chosen is held unsettled and goes back to the DLQ when
the consumer closes. Killed at any point, the broker returns what was not acked: a
message is lost never, and duplicated at worst (sent, not yet acked), which idempotent
consumers drop because the id is kept.

A pass examines each message once: a message seen again (for instance replayed, failed
once more and dead-lettered again during the same sweep) is left alone, so a sweep
always ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field

from mailbag.broker import Broker, Delivery
from mailbag.dlq.pace import Pace
from mailbag.dlq.record import DeadLetter

#: AMQP's prefetch count is 16 bits: the most deliveries one consumer may hold
MAX_WINDOW = 65535

Act = Callable[[list[DeadLetter]], Awaitable[None]]
Progress = Callable[[int, int], None]


@dataclass
class SweepResult:
    """What a sweep did: how many messages it removed from the DLQ and their ids (where
    known: a native purge does not name them), how many it examined and left there, and
    the requested ids it did not find."""

    removed: int = 0
    done: list[str] = field(default_factory=list)
    kept: int = 0
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sweep:
    """One pass over `dead_letter_queue`: `choose` picks records, `act` is awaited on
    each batch of chosen ones before they are acked.

    `batch` bounds how many are acted on at once (and so how many a kill can duplicate);
    `rate` caps messages per second; `idle` is how long to wait for a delivery before
    deciding the queue has nothing more to give (the ready count from `stats` usually
    ends the pass first)."""

    broker: Broker
    dead_letter_queue: str
    source_queue: str | None
    choose: Callable[[DeadLetter], bool]
    act: Act
    ids: Collection[str] = ()
    batch: int = 10
    rate: float | None = None
    idle: float = 5.0
    flush_after: float = 0.05

    async def run(self, on_progress: Progress | None = None) -> SweepResult:
        """Examine each ready message once; `on_progress(examined, total)` after each."""
        total = (await self.broker.stats(self.dead_letter_queue)).ready
        result = SweepResult()
        wanted = set(self.ids)
        if total == 0:
            result.missing = sorted(wanted)
            return result
        pace = Pace(self.rate, self.batch)
        seen: set[str] = set()
        finished: set[str] = set()
        pending: list[tuple[Delivery, DeadLetter]] = []

        async def flush() -> None:
            chosen = pending[:]
            pending.clear()
            if chosen:
                await self.act([record for _, record in chosen])
                for delivery, record in chosen:
                    await delivery.ack()
                    result.done.append(record.id)
                    result.removed += 1
                    finished.add(record.id)

        window = min(total + pace.batch + 1, MAX_WINDOW)
        async with self.broker.consume(self.dead_letter_queue, prefetch=window) as consumer:
            while len(seen) < total and not (wanted and wanted <= finished):
                try:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    async with asyncio.timeout(self.flush_after if pending else self.idle):
                        delivery = await anext(consumer)
                except TimeoutError:
                    if not pending:
                        break
                    await flush()
                    continue
                except StopAsyncIteration:
                    break
                record = DeadLetter.from_message(delivery.message, self.dead_letter_queue, self.source_queue)
                if record.id in seen:
                    continue  # held: it goes back when the consumer closes
                seen.add(record.id)
                if (not wanted or record.id in wanted) and self.choose(record):
                    await pace.wait()
                    pending.append((delivery, record))
                    if len(pending) >= pace.batch:
                        await flush()
                else:
                    result.kept += 1
                if on_progress is not None:
                    on_progress(len(seen), total)
            await flush()
        # leaving the block closed the consumer: every message not acked is back in the DLQ
        result.missing = sorted(wanted - finished)
        return result
