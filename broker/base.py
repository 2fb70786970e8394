"""The `Broker` contract every adapter implements, and the consumer it hands out.

The docstrings are the contract; `tests/conformance/` checks it on every adapter.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from mailbag.broker.message import Delivery, Message
from mailbag.broker.topology import Topology
from mailbag.broker.unroutable import Unrouted

log = logging.getLogger("mailbag.broker")


@dataclass(frozen=True)
class QueueStats:
    """Counts for one queue: `ready` to deliver, `in_flight` handed to consumers and
    not settled, `delayed` waiting out a retry delay, `dead_letters` in its DLQ.
    A count is None where the broker cannot tell."""

    queue: str
    ready: int
    in_flight: int | None
    delayed: int | None
    dead_letters: int


class Link:
    """Whether a broker's connection is up, as its adapter last saw it: RabbitMQ's
    connection closing and coming back, an SQS receive failing and answering again.
    Each change is logged once and passed to every `watch`er at once (in the event
    loop; a watcher must not block), so whoever depends on the connection (a worker's
    readiness) learns of it when the adapter does, not at its next poll."""

    def __init__(self) -> None:
        self.up = True
        #: why the connection is down ("" while up)
        self.reason = ""
        self._watchers: list[Callable[[bool], None]] = []

    def watch(self, watcher: Callable[[bool], None]) -> None:
        """Call `watcher(up)` at every change from now on."""
        self._watchers.append(watcher)

    def unwatch(self, watcher: Callable[[bool], None]) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def report(self, up: bool, reason: str = "") -> None:
        """The adapter saw the connection up (or down, because of `reason`)."""
        if up == self.up:
            return
        self.up, self.reason = up, "" if up else reason
        if up:
            log.info("broker connection is back")
        else:
            log.warning("broker connection is down: %s", reason)
        for watcher in list(self._watchers):
            watcher(up)


class Consumer(ABC):
    """Deliveries from one queue, as an async iterator. At most `prefetch` deliveries
    are unsettled at once: iteration waits while that many are held.

    `stop()` ends the iteration; deliveries already handed out can still be settled
    (graceful shutdown). `close()` also returns every unsettled delivery to the queue,
    at the front where the broker allows; settling one afterwards raises
    `DeliveryReleased`. Leaving `async with` closes. Cancelling a task blocked in
    `__anext__` loses nothing."""

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    @abstractmethod
    async def __anext__(self) -> Delivery: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Broker(ABC):
    """A connection to one broker. Safe to share between tasks of one event loop.

    Delivery is at least once: a consumer must expect duplicates. After `close()`,
    `publish` and `consume` raise `BrokerClosed`."""

    #: the URL this broker was opened with, password masked
    url: str = ""
    #: the most bytes of body and headers one message may have here; None: no limit of ours
    max_message_size: int | None = None

    @cached_property
    def unrouted(self) -> Unrouted:
        """Publishes no queue took, counted per topic (see `publish`)."""
        return Unrouted()

    @cached_property
    def link(self) -> Link:
        """The connection's state, kept by the adapter (see `Link`); always up on a
        broker without a connection."""
        return Link()

    @abstractmethod
    async def declare(self, topology: Topology) -> None:
        """Create the topics, queues, subscriptions, retry and dead-letter plumbing.
        Declaring the same topology twice is a no-op; a conflicting redeclaration
        raises `TopologyError` naming the queue and the setting."""

    @abstractmethod
    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        """Fan the messages out to every queue subscribed to `topic`. Returns once the
        broker has confirmed all of them; raises `PublishFailed` naming those it did not.

        A message no queue takes (none is subscribed to the topic, or no subscription's
        filter matches it) is not an error: it is dropped, counted in `unrouted` and
        logged (one WARNING per topic at most once a minute). With `mandatory=True` the
        call raises `Unroutable` naming the topic and those messages, after publishing
        the others: a permanent error, never worth a retry, and no sign of a broker fault.
        An undeclared topic raises `UnknownTopic` either way."""

    @abstractmethod
    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        """Put the messages straight into one queue, bypassing topics (replay, repair).
        Confirmed like `publish`. With `delay` > 0 they become deliverable only after
        that many seconds. Each is a new message to the broker: its attempt starts at 1
        (a dead-letter replay sends this way)."""

    @abstractmethod
    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        """Start consuming `queue`; see `Consumer`. Several consumers of one queue
        compete: each message goes to one of them."""

    @abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """Ready, in-flight and dead-letter counts of a declared queue."""

    @abstractmethod
    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        """Up to `limit` ready messages of `queue`, oldest first, without consuming them."""

    @abstractmethod
    async def purge(self, queue: str) -> int:
        """Drop every ready message of `queue`; returns how many."""

    @abstractmethod
    async def remove(self, topology: Topology) -> None:
        """Delete the topology's queues (with their dead-letter and retry queues and every
        message in them) and its topics: what `declare` created. Removing what is not
        there is a no-op. For tools that declare for a run and leave nothing behind;
        no consumer may be reading a removed queue."""

    #: the queue where this broker keeps delayed messages whose queue was deleted while
    #: they waited, or None where such messages are deleted with their queue
    orphans_queue: str | None = None

    async def orphans(self) -> int | None:
        """How many messages `orphans_queue` holds (0 before it exists), None where there
        is none. While there are some, each call may log a WARNING, at most once a minute:
        they stay there, for inspection, until someone moves or purges them."""
        return None

    async def queue_names(self) -> list[str] | None:
        """Every queue the broker holds (dead-letter queues included), or None where the
        protocol cannot list them."""
        return None

    @abstractmethod
    async def close(self) -> None:
        """Close consumers (returning what they held) and the connection. Idempotent."""

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
