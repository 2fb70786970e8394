"""`Delegating`: a `Broker` that passes the whole contract to the broker it wraps.

Wrappers (the harness's fault injector, the test bus's observer, a broker that records
what was declared) subclass it and override only what they change, so none forgets a
call (`unrouted`, `queue_names`, ...) when the contract grows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mailbag.broker.base import Broker, Consumer, QueueStats
from mailbag.broker.message import Message
from mailbag.broker.topology import Topology
from mailbag.broker.unroutable import Unrouted

log = logging.getLogger("mailbag.broker")


class Delegating(Broker):
    """Every call goes to `inner`, unchanged. Closing it closes `inner`."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.inner.url

    @property
    def max_message_size(self) -> int | None:  # type: ignore[override]
        return self.inner.max_message_size

    @property
    def unrouted(self) -> Unrouted:
        return self.inner.unrouted

    async def declare(self, topology: Topology) -> None:
        await self.inner.declare(topology)

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

    async def remove(self, topology: Topology) -> None:
        await self.inner.remove(topology)

    async def queue_names(self) -> list[str] | None:
        return await self.inner.queue_names()

    async def close(self) -> None:
        await self.inner.close()


class Declaring(Delegating):
    """Keeps every topology declared through it, so `remove_declared` can leave the
    broker with the queues and topics it found (a comparison run, a test on a shared
    broker)."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner)
        self.declared: list[Topology] = []

    async def declare(self, topology: Topology) -> None:
        self.declared.append(topology)
        await self.inner.declare(topology)

    async def remove_declared(self) -> None:
        """Remove everything declared so far, newest first. A failure is logged, not
        raised: the work done stands, and the names are in the log line."""
        while self.declared:
            topology = self.declared.pop()
            try:
                await self.inner.remove(topology)
            except Exception as exc:
                names = ", ".join([q.name for q in topology.queues] + list(topology.topics))
                log.warning("could not remove %s: %s", names, exc)
