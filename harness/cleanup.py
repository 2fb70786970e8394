"""What a comparison run declared, removed once each scenario is done, so a run leaves
the broker with the queues and topics it found."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mailbag.broker import Broker, Consumer, Message, QueueStats, Topology

log = logging.getLogger("mailbag.harness")


class Declaring(Broker):
    """Wraps `inner` and keeps every topology declared through it, for `remove_declared`."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.url = inner.url
        self.declared: list[Topology] = []

    async def declare(self, topology: Topology) -> None:
        self.declared.append(topology)
        await self.inner.declare(topology)

    async def remove(self, topology: Topology) -> None:
        await self.inner.remove(topology)

    async def remove_declared(self) -> None:
        """Remove everything declared so far, newest first. A failure is logged, not
        raised: the scenario's result stands, and the names are in the log line."""
        while self.declared:
            topology = self.declared.pop()
            try:
                await self.inner.remove(topology)
            except Exception as exc:
                names = ", ".join([q.name for q in topology.queues] + list(topology.topics))
                log.warning("could not remove %s: %s", names, exc)

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
