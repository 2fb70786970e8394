"""Brokers that wrap a real one for tests: `Cuttable` for the in-memory backend, which
has no socket to cut (while cut, every call raises `BrokerUnavailable`, as the network
adapters do when their connection is gone), and `Recording`, which notes every id the
broker confirmed, in order."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker import Broker, BrokerUnavailable, Message, Topology
from mailbag.broker.base import Consumer, QueueStats
from mailbag.broker.delegating import Delegating


class Cuttable(Delegating):
    """While cut, every call but `remove` and `close` raises `BrokerUnavailable`."""

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

    async def declare(self, topology: Topology) -> None:
        self._check()
        await super().declare(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self.publish_calls += 1
        self._check()
        await super().publish(topic, messages, mandatory=mandatory)

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        self._check()
        await super().send(queue, messages, delay=delay)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        self._check()
        return super().consume(queue, prefetch)

    async def stats(self, queue: str) -> QueueStats:
        self._check()
        return await super().stats(queue)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        self._check()
        return await super().browse(queue, limit)

    async def purge(self, queue: str) -> int:
        self._check()
        return await super().purge(queue)


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
