"""Running consumers until a scenario has what it waits for, or until the broker has
gone quiet for too long (then what is missing is lost)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from mailbag.broker import Broker, Delivery
from mailbag.harness.ledger import Ledger

#: how often the watcher looks at the ledgers
POLL = 0.01
#: a retry still out is waited for this many times the patience: the scenario's queue is
#: removed after the wait, and a retry still in the broker then is orphaned there
RETRY_PATIENCE = 2

Handle = Callable[[Delivery, int], Awaitable[None]]


@dataclass(frozen=True)
class Lane:
    """`consumers` competing consumers of `queue`, each passing every delivery to
    `handle(delivery, consumer_index)`, which settles it."""

    queue: str
    handle: Handle
    consumers: int = 1
    prefetch: int = 10


async def drain(
    broker: Broker,
    ledgers: Sequence[Ledger],
    lanes: Sequence[Lane],
    *,
    grace: float,
    patience: float,
    publisher: asyncio.Task[object] | None = None,
) -> None:
    """Consume on every lane until each ledger is complete and no delivery came for
    `grace` seconds (late duplicates are still counted), or until nothing came for
    `patience` seconds. A ledger is only complete once `publisher`, when given, is
    done. While a retry is out (`Ledger.retrying`) neither ends the wait; only
    `RETRY_PATIENCE` times the patience does. The consumers are closed before this
    returns: what they held goes back."""
    tasks = [asyncio.create_task(_consume(broker, lane, index)) for lane in lanes for index in range(lane.consumers)]
    try:
        while True:
            await asyncio.sleep(POLL)
            for task in [*tasks, publisher] if publisher else tasks:
                if task.done():
                    task.result()  # a consumer or publisher that died takes the scenario down with it
            published = publisher is None or publisher.done()
            quiet = time.monotonic() - max(ledger.last_change for ledger in ledgers)
            if any(ledger.retries_out for ledger in ledgers):
                if quiet >= RETRY_PATIENCE * patience:
                    return
                continue
            if quiet >= patience or (quiet >= grace and published and all(ledger.complete for ledger in ledgers)):
                return
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _consume(broker: Broker, lane: Lane, index: int) -> None:
    async with broker.consume(lane.queue, prefetch=lane.prefetch) as consumer:
        async for delivery in consumer:
            await lane.handle(delivery, index)
