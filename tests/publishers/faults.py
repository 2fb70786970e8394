"""Brokers that wrap a real one for tests: `Cuttable` for the in-memory backend, which
has no socket to cut (while cut, every call raises `BrokerUnavailable`, as the network
adapters do when their connection is gone), and `Recording`, which notes every id the
broker confirmed, in order."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker import Broker, BrokerUnavailable, Message, Topology
from mailbag.broker.base import Consumer, QueueStats


class Delegating(Broker):
    """Passes every call to `inner` after `_check()`."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.url = inner.url

    def _check(self) -> None:
        pass

    async def declare(self, topology: Topology) -> None:
        self._check()
        await self.inner.declare(topology)

    async def remove(self, topology: Topology) -> None:
        await self.inner.remove(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self._check()
        await self.inner.publish(topic, messages, mandatory=mandatory)

    async def send(self, queue: str, messages: Sequence[Message]) -> None:
        self._check()
        await self.inner.send(queue, messages)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        self._check()
        return self.inner.consume(queue, prefetch)

    async def stats(self, queue: str) -> QueueStats:
        self._check()
        return await self.inner.stats(queue)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        self._check()
        return await self.inner.browse(queue, limit)

    async def purge(self, queue: str) -> int:
        self._check()
        return await self.inner.purge(queue)

    async def close(self) -> None:
        await self.inner.close()


class Cuttable(Delegating):
    def __init__(self, inner: Broker) -> None:
        super().__init__(inner)
        self._cut = False
        self.publish_calls = 0

    def cut(self) -> None:
        self._cut = True

    def restore(self) -> None:
        self._cut = False

    def _check(self) -> None:
        if self._cut:
            raise BrokerUnavailable(f"broker {self.url} is unreachable (link cut)")

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self.publish_calls += 1
        await super().publish(topic, messages, mandatory=mandatory)


class Recording(Delegating):
    """`confirmed` lists the ids of every confirmed publish, in confirm order, shared
    between the recorders given the same list."""

    def __init__(self, inner: Broker, confirmed: list[str] | None = None) -> None:
        super().__init__(inner)
        self.confirmed = [] if confirmed is None else confirmed

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await super().publish(topic, messages, mandatory=mandatory)
        self.confirmed.extend(m.id for m in messages)

    async def close(self) -> None:
        """The wrapped broker belongs to whoever made it."""
