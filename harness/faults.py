"""A fault-injecting `Broker` wrapper, so the harness can prove each of its detectors
fires: a harness that cannot see a fault is a bug.

Each fault hits a configurable share of messages, chosen by a seeded random
generator; `injected` counts what was actually done, for tests to compare against
what the scenarios detected.

- drop: a published message is confirmed but never delivered, and a message held by
  a consumer that closes is acked instead of going back (lost in a crash);
- duplicate: a published message is delivered twice, the copy `duplicate_after` seconds
  after the original (a redelivery that comes late);
- reorder: a published message is moved `reorder_distance` places later in its batch;
- delay: a published message arrives `delay_seconds` late, and a retry comes back
  `delay_seconds` later than asked.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields

from mailbag.broker import Broker, Consumer, Delivery, Message
from mailbag.broker.delegating import Delegating


@dataclass(frozen=True)
class Faults:
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    delay_seconds: float = 0.25
    duplicate_after: float = 0.0
    reorder_distance: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("drop", "duplicate", "reorder", "delay") and not 0 <= getattr(self, f.name) <= 1:
                raise ValueError(f"{f.name} is a share of messages: 0 to 1, got {getattr(self, f.name)}")
        if self.delay_seconds < 0 or self.duplicate_after < 0 or self.reorder_distance < 1:
            raise ValueError("delay_seconds and duplicate_after must be >= 0, reorder_distance >= 1")


class FaultyBroker(Delegating):
    """Wraps `inner`; everything not listed above passes straight through."""

    def __init__(self, inner: Broker, faults: Faults) -> None:
        super().__init__(inner)
        self.faults = faults
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(faults.seed)
        self._late: set[asyncio.Task[None]] = set()

    @property
    def lateness(self) -> float:
        """The longest this wrapper holds a message back: the harness waits that much
        longer than the broker's own timing asks (`Timing.held_back`)."""
        late = [self.faults.delay_seconds] if self.faults.delay else []
        if self.faults.duplicate:
            late.append(self.faults.duplicate_after)
        return max(late, default=0.0)

    def hits(self, fault: str) -> bool:
        """Whether the next message is hit by `fault` (counted if so)."""
        hit = self._rng.random() < getattr(self.faults, fault)
        if hit:
            self.injected[fault] += 1
        return hit

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await self._deliver(messages, lambda batch: self.inner.publish(topic, batch, mandatory=mandatory))

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        await self._deliver(messages, lambda batch: self.inner.send(queue, batch, delay=delay))

    async def _deliver(self, messages: Sequence[Message], forward) -> None:
        batch: list[Message] = []
        copies: list[Message] = []
        for m in messages:
            if self.hits("drop"):
                continue
            batch.append(m)
            if self.hits("duplicate"):
                (copies if self.faults.duplicate_after else batch).append(m)
        batch = self._reorder(batch)
        is_late = [self.hits("delay") for _ in batch]
        late = [m for m, hit in zip(batch, is_late) if hit]
        on_time = [m for m, hit in zip(batch, is_late) if not hit]
        self._later(forward, late, self.faults.delay_seconds)
        if on_time:
            await forward(on_time)
        self._later(forward, copies, self.faults.duplicate_after)

    def _reorder(self, batch: list[Message]) -> list[Message]:
        moved = [i for i in range(len(batch) - 1) if self._rng.random() < self.faults.reorder]
        for i in reversed(moved):
            batch.insert(min(len(batch), i + self.faults.reorder_distance + 1), batch[i])
            del batch[i]
        self.injected["reorder"] += len(moved)
        return batch

    def _later(self, forward, late: list[Message], seconds: float) -> None:
        if late:
            task = asyncio.create_task(self._forward_after(forward, late, seconds))
            self._late.add(task)
            task.add_done_callback(self._late.discard)

    @staticmethod
    async def _forward_after(forward, late: list[Message], seconds: float) -> None:
        await asyncio.sleep(seconds)
        await forward(late)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        return _FaultyConsumer(self, self.inner.consume(queue, prefetch))

    async def settle(self) -> None:
        """Wait until every message held back has gone out: the wrapper delays, it does
        not lose (and nothing goes out to a queue removed meanwhile)."""
        await asyncio.gather(*self._late, return_exceptions=True)

    async def close(self) -> None:
        await self.settle()
        await self.inner.close()


class _FaultyConsumer(Consumer):
    def __init__(self, broker: FaultyBroker, inner: Consumer) -> None:
        self.broker = broker
        self.inner = inner
        self.unsettled: set[_FaultyDelivery] = set()

    async def __anext__(self) -> Delivery:
        delivery = _FaultyDelivery(self, await self.inner.__anext__())
        self.unsettled.add(delivery)
        return delivery

    def stop(self) -> None:
        self.inner.stop()

    async def close(self) -> None:
        for delivery in list(self.unsettled):
            if self.broker.hits("drop"):
                await delivery.inner.ack()  # lost with the consumer
        self.unsettled.clear()
        await self.inner.close()


class _FaultyDelivery(Delivery):
    __slots__ = ("_consumer", "inner")

    def __init__(self, consumer: _FaultyConsumer, inner: Delivery) -> None:
        super().__init__(inner.message, inner.queue, inner.attempt)
        self.inner = inner
        self._consumer = consumer

    async def _ack(self) -> None:
        self._consumer.unsettled.discard(self)
        await self.inner.ack()

    async def _retry(self, delay: float) -> None:
        self._consumer.unsettled.discard(self)
        if self._consumer.broker.hits("delay"):
            delay += self._consumer.broker.faults.delay_seconds
        await self.inner.retry(delay)

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        self._consumer.unsettled.discard(self)
        await self.inner.dead_letter(reason, error)
