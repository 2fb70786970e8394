"""A `Broker` that passes every call to the one it wraps: the base of the harness's
wrappers (`cleanup.Declaring`, `faults.FaultyBroker`), which override what they change."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker import Broker, Consumer, Message, QueueStats, Topology


class Delegating(Broker):
    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.url = inner.url

    async def declare(self, topology: Topology) -> None:
        await self.inner.declare(topology)

    async def remove(self, topology: Topology) -> None:
        await self.inner.remove(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await self.inner.publish(topic, messages, mandatory=mandatory)

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        await self.inner.send(queue, messages, delay=delay)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        return self.inner.consume(queue, prefetch)

    async def stats(self, queue: str) -> QueueStats:
        return await self.inner.stats(queue)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        return await self.inner.browse(queue, limit)

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(queue)

    async def queue_names(self) -> list[str] | None:
        return await self.inner.queue_names()

    async def close(self) -> None:
        await self.inner.close()
