"""The RabbitMQ adapter (`amqp://`, `amqps://`) on aio-pika.

One robust connection per broker; it reconnects by itself (to the next node of a
cluster URL), and each consumer opens a channel of its own again, every step bounded
by `OPEN_TIMEOUT` (aio-pika's robust channels are not used: their restore has no time
bound). Publishing goes through one channel with publisher confirms, pipelined: every
message of a call is in flight at once and the call returns when the broker has
confirmed them all. A channel that nacked, or left every publish unanswered for
`STALLED_AFTER`, is replaced by a fresh one (after a failover, a channel that met the
quorum queue between leaders nacks from then on). `mandatory` is always set on the
wire, so a message no queue takes comes back (aio-pika hands it back as a result, it
does not raise): `publish` counts it as unrouted, or raises `Unroutable` when the
caller asked for `mandatory`; `send` and settlements fail with `PublishFailed` (the
target queue is gone). What a dropped connection or a replaced channel left
unconfirmed is sent again (a duplicate at worst); a publish fails only when nothing
moved for `publish_timeout`.
Each consumer has a channel of its own with `prefetch` as its QoS.

Settlement:
- `ack` acks;
- `retry(delay)` publishes a copy carrying attempt + 1 through the fixed binary delay
  levels (`mailbag.broker.rabbitmq.delays`: 10 ms steps, never early, at most 10 ms
  plus a hop per level late) or, for no delay, to the back of the work queue, and acks
  the original only once the copy is confirmed: a crash in between duplicates, never
  loses; `postpone(delay)` does the same with the attempt unchanged;
- on an ordered queue `retry` keeps the message unacked in the consumer and hands it
  out again after the delay, ahead of the rest of its key, which waits;
- `dead_letter` publishes a stamped copy to the dead-letter queue, then acks;
- a retry past the queue's max attempts dead-letters with `DELIVERY_LIMIT_EXCEEDED`,
  and so does the consumer for a message that arrives past it (a crash loop); a quorum
  queue's `x-delivery-limit` stops a crash loop even when no consumer of ours sees it.

Settlements that publish run to the end even when the calling task is cancelled.

Closing always ends: every broker call on the way out (`basic.cancel`, channel and
connection close) is bounded by `CLOSE_TIMEOUT`, and a consumer whose connection is
down skips `basic.cancel` (the broker takes back what was unacked when the connection
goes anyway). aio-pika's robust objects would otherwise wait for a reconnect that,
with the broker unreachable, may never come.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from dataclasses import replace
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
import yarl
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential,
)

from mailbag.broker import headers as h
from mailbag.broker.backoff import RETURNS
from mailbag.broker.base import Broker, Consumer, QueueStats
from mailbag.broker.errors import (
    BrokerClosed,
    BrokerUnavailable,
    BrokerUrlError,
    DeliveryReleased,
    PublishFailed,
    TopologyError,
    UnknownQueue,
    UnknownTopic,
)
from mailbag.broker.message import Delivery, Message
from mailbag.broker.rabbitmq import delays
from mailbag.broker.rabbitmq.cluster import FailoverConnection, node_urls
from mailbag.broker.rabbitmq.marshal import (
    ATTEMPT,
    Outgoing,
    attempt_of,
    from_amqp,
    header_frame_size,
    republished,
    to_amqp,
)
from mailbag.broker.rabbitmq.topology import declare_topology, filter_exchange_name
from mailbag.broker.topology import Queue, Topology
from mailbag.broker.unroutable import Sparingly
from mailbag.broker.url import check_options, mask_url, queue_kind

log = logging.getLogger("mailbag.broker.rabbitmq")

#: how often a publish sends again what a dropped connection lost
_PUBLISH_ROUNDS = 3
#: seconds a publishing channel may leave every publish unanswered before the next
#: publish goes on a fresh channel (the `Publisher`'s default attempt timeout): the
#: unanswered ones are then sent again there, a duplicate at worst
STALLED_AFTER = 5.0

#: errors that mean the connection or channel went away under an operation
_GONE = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
)


#: errors of a consumer's opening that a reconnect cures
_LOST_WHILE_OPENING = (
    aiormq.exceptions.AMQPConnectionError,  # a ConnectionError too
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    asyncio.TimeoutError,
)
#: seconds between a consumer's failed opening and its next try
_REOPEN_PAUSE = 0.1
#: the longest a consumer's opening (channel, qos, declare, consume) waits for the broker
OPEN_TIMEOUT = 10.0
#: the longest one step of closing (a consumer, the connection) waits for the broker
CLOSE_TIMEOUT = 2.0
#: header bytes a dead letter keeps for its stamp's fields other than its text (queue,
#: topic, time, host, error type) and their encoding
STAMP_ROOM = 2048
#: frame_max RabbitMQ negotiates unless configured otherwise
DEFAULT_FRAME_MAX = 131_072


class RabbitBroker(Broker):
    """A broker on one robust aio-pika connection; see the module docstring."""

    orphans_queue = delays.ORPHANS

    def __init__(
        self,
        url: str,
        connection: AbstractRobustConnection,
        publish_timeout: float,
        queue_kind: Literal["classic", "quorum"] | None = None,
    ) -> None:
        self.url = mask_url(url)
        #: the URL's `?queue=quorum`: every queue declared here is a quorum queue
        self._queue_kind = queue_kind
        self._connection = connection
        self._publish_timeout = publish_timeout
        #: the channel publishes go on, and how it answers them; replaced by a fresh one when
        #: it nacks or stalls (`_publishing_channel`)
        self._publishing: aio_pika.Channel | None = None
        self._answers = _Answers()
        self._publishing_lock = asyncio.Lock()
        self._specs: dict[str, Queue] = {}
        self._dead_letter_queues: set[str] = set()
        self._topics: set[str] = set()
        self._known_queues: set[str] = set()
        #: queue kinds whose delay levels are declared, and queues bound to them
        self._delay_kinds: set[str] = set()
        self._delay_targets: set[str] = set()
        self._consumers: set[_RabbitConsumer] = set()
        #: replaced publishing channels being closed
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._warnings = Sparingly()
        connection.close_callbacks.add(self._connection_lost)
        connection.reconnect_callbacks.add(self._connection_back)

    @property
    def frame_max(self) -> int:
        """The largest frame the connection takes, as negotiated with the broker."""
        transport = self._connection.transport
        tune = getattr(transport.connection, "connection_tune", None) if transport is not None else None
        return int(tune.frame_max) if tune is not None and tune.frame_max else DEFAULT_FRAME_MAX

    @property
    def node(self) -> str:
        """host:port of the RabbitMQ node the connection is on (or is trying to reach)."""
        assert isinstance(self._connection, FailoverConnection)  # what `open_broker` makes
        return self._connection.node

    def _connection_lost(self, _: object, exc: BaseException | None) -> None:
        if not self._closed:  # closing it ourselves is no outage
            self.link.report(False, f"connection to {self.node} lost: {exc!r}")

    def _connection_back(self, _: object) -> None:
        """Called once the channels (and the consumers on them) are restored."""
        self.link.report(True)

    # -- contract -------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        self._check_open()
        if self._queue_kind == "quorum":
            topology = replace(topology, queues=tuple(replace(q, kind="quorum") for q in topology.queues))
        for spec in topology.queues:
            if spec.name in self._dead_letter_queues:
                raise TopologyError(f"{spec.name!r} is already declared as a dead-letter queue")
            if spec.dead_letter_queue in self._specs:
                raise TopologyError(
                    f"{spec.dead_letter_queue!r} is already declared as a queue, not a dead-letter queue"
                )
        for kind in sorted({spec.kind for spec in topology.queues}):
            await self._delay_levels(kind)
        async with self._scratch() as channel:
            await declare_topology(channel, topology)
        for spec in topology.queues:
            self._specs[spec.name] = spec
            self._dead_letter_queues.add(spec.dead_letter_queue)
            self._known_queues.update((spec.name, spec.dead_letter_queue))
            self._delay_targets.add(spec.name)
        self._topics.update(topology.topics)

    async def remove(self, topology: Topology) -> None:
        self._check_open()
        async with self._scratch() as channel:
            for spec in topology.queues:
                for name in (spec.name, spec.dead_letter_queue):
                    await channel.queue_delete(name)
                    self._known_queues.discard(name)
                self._specs.pop(spec.name, None)
                self._dead_letter_queues.discard(spec.dead_letter_queue)
                self._delay_targets.discard(spec.name)
            for topic in topology.topics:
                await channel.exchange_delete(topic)
                await channel.exchange_delete(filter_exchange_name(topic))
                self._topics.discard(topic)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self._check_open()
        for m in messages:
            if m.topic != topic:
                raise ValueError(f"message {m.id} is for topic {m.topic!r}, not {topic!r}")
        await self._check_topic(topic)
        returned = await self._confirmed(topic, "", [to_amqp(m) for m in messages], f"topic {topic!r}", routed=False)
        self.unrouted.note(topic, returned, mandatory=mandatory)

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        """A delay goes through the delay levels, like a retry."""
        self._check_open()
        if delay < 0:
            raise ValueError(f"send delay must be >= 0, got {delay}")
        await self._check_queue(queue)
        if delay <= 0:
            await self._confirmed("", queue, [to_amqp(m) for m in messages], f"queue {queue!r}")
            return
        outgoing = [to_amqp(m, extra_headers={delays.TARGET: queue}) for m in messages]
        await self._delayed(queue, outgoing, delay)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        consumer = _RabbitConsumer(self, queue, self._specs.get(queue), prefetch)
        self._consumers.add(consumer)
        return consumer

    async def stats(self, queue: str) -> QueueStats:
        self._check_open()
        ready = await self._count(queue)
        if ready is None:
            raise UnknownQueue(f"queue {queue!r} is not declared")
        spec = self._specs.get(queue)
        dead = await self._count(spec.dead_letter_queue if spec else f"{queue}.dlq")
        return QueueStats(queue, ready, None, None, dead or 0)  # delay queues are shared: delayed unknown

    async def orphans(self) -> int:
        self._check_open()
        count = await self._depth(delays.ORPHANS) or 0
        if count and self._warnings.due(delays.ORPHANS):
            log.warning(
                "%d delayed messages wait in queue %r: the queue each was delayed for was deleted while it "
                "waited; they read as dead letters there: mailbag dlq ls QUEUE --dlq %s (then replay or purge)",
                count,
                delays.ORPHANS,
                delays.ORPHANS,
            )
        return count

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        """Gets up to `limit` messages unacked and closes the channel, which puts them
        back where they were. A quorum queue counts that as a delivery in
        `x-delivery-count`, and consumers do not see them for that moment."""
        self._check_open()
        await self._check_queue(queue)
        found: list[Message] = []
        async with self._scratch() as channel:
            source = await channel.get_queue(queue, ensure=False)
            while len(found) < limit:
                raw = await source.get(no_ack=False, fail=False)
                if raw is None:
                    break
                found.append(from_amqp(raw, orphaned=queue == delays.ORPHANS))
        return found

    async def purge(self, queue: str) -> int:
        self._check_open()
        await self._check_queue(queue)
        async with self._scratch() as channel:
            source = await channel.get_queue(queue, ensure=False)
            result = await source.purge()
        return int(result.message_count or 0)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*(consumer.close() for consumer in list(self._consumers)))
        await asyncio.gather(*self._closing, return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._connection.close()
        except _GONE as exc:
            log.warning("closing the connection to %s: %r; leaving it", self.url, exc)

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed(f"broker {self.url} is closed")

    def _scratch(self) -> aio_pika.Channel:
        """A plain (not robust) channel for declarations and passive checks, which the
        broker closes on failure."""
        return aio_pika.Channel(self._connection, publisher_confirms=False)

    async def _count(self, queue: str) -> int | None:
        """Ready messages in `queue`, or None when it does not exist; a queue found is
        known to exist from then on, but for the catch-all of orphans, which belongs to
        the vhost like the delay levels (a test's cleanup deletes the known queues)."""
        count = await self._depth(queue)
        if count is not None and queue != delays.ORPHANS:
            self._known_queues.add(queue)
        return count

    async def _depth(self, queue: str) -> int | None:
        """Ready messages in `queue`, or None when it does not exist."""
        try:
            async with self._scratch() as channel:
                found = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        return int(found.declaration_result.message_count or 0)

    async def _check_queue(self, queue: str) -> None:
        if queue not in self._known_queues and await self._count(queue) is None:
            raise UnknownQueue(f"queue {queue!r} is not declared")

    async def _check_topic(self, topic: str) -> None:
        if topic not in self._topics:
            try:
                async with self._scratch() as channel:
                    await channel.declare_exchange(topic, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise UnknownTopic(f"topic {topic!r} is not declared") from None
            self._topics.add(topic)

    async def _confirmed(
        self, exchange: str, routing_key: str, messages: list[Outgoing], where: str, *, routed: bool = True
    ) -> list[str]:
        """Publish all at once and wait for every confirm. What the connection lost is
        published again once it is back (a duplicate at worst). Gives up when nothing
        moved (no confirm, no reconnect) for the publish timeout, and raises
        `PublishFailed` naming what the broker refused or never confirmed, and what it
        returned (no queue took it) when `routed` asks that every message be taken.
        A message sent once and never confirmed stays unknown whatever its later tries
        met. Returns the ids of the returned messages."""
        returned: list[str] = []
        refused: list[str] = []
        sent: set[str] = set()  # ids that went out on a channel that then failed them
        lost: list[Outgoing] = []
        unsent = ""
        for _ in range(_PUBLISH_ROUNDS):
            try:
                channel, answers = await self._publishing_channel()
                underlay = await channel.get_underlay_channel()
            except _GONE as exc:
                lost, unsent = messages, f"no channel to publish on ({type(exc).__name__})"
                break
            nacked = len(refused)
            lost, stuck = await self._publish_once(
                underlay, answers, exchange, routing_key, messages, returned, refused
            )
            if stuck or len(refused) > nacked:
                self._renew_publishing(channel)
            sent.update(m.id for m in lost)
            if not lost or stuck or self._closed:
                break
            messages = lost
        problems = []
        if returned and routed:
            problems.append(f"{len(returned)} unroutable on {where} (no queue is bound, or none of its filters match)")
        if refused:
            problems.append(f"{len(refused)} refused (nacked) by the broker on {where}")
        if lost:
            why = unsent or f"nothing moved for {self._publish_timeout:g}s"
            problems.append(f"{len(lost)} not confirmed on {where} ({why})")
        if problems:
            failed = (returned if routed else []) + refused + [m.id for m in lost]
            unknown = [i for i in failed if i in sent]  # sent, never confirmed: they may be in the queue
            raise PublishFailed("; ".join(problems), failed, unknown=unknown)
        return returned

    async def _publishing_channel(self) -> tuple[aio_pika.Channel, _Answers]:
        """The open channel with publisher confirms that publishes go on: the last one
        while it is open and answering (see `STALLED_AFTER`), else a fresh one once the
        connection is up, within the publish timeout (else `TimeoutError`), waiting for
        a concurrent opening included."""
        async with asyncio.timeout(self._publish_timeout), self._publishing_lock:
            current = self._publishing
            if current is not None and self._answers.stalled():
                self._renew_publishing(current)
                current = None
            if current is None or current.is_closed:
                self._publishing = None
                current = await self._open_publishing()
                self._publishing, self._answers = current, _Answers()
            return current, self._answers

    async def _open_publishing(self) -> aio_pika.Channel:
        """A new channel with publisher confirms, tried again while the connection is
        lost (it may not say so yet) until it is back."""
        while True:
            await self._connection.connected.wait()
            channel = aio_pika.Channel(self._connection, publisher_confirms=True)
            try:
                await channel.initialize()
            except _LOST_WHILE_OPENING:
                await asyncio.sleep(_REOPEN_PAUSE)
            else:
                return channel

    def _renew_publishing(self, channel: aio_pika.Channel) -> None:
        """Publish on a fresh channel from now on: a channel that nacked or left confirms
        unanswered may keep doing so (after a failover a quorum queue's new leader is
        unknown to it), while a new channel on the same connection is answered. The
        publishes still awaiting a confirm on it end now, so their rounds send them again
        on the new one (closing the channel would end them too, unless it goes unanswered)."""
        if self._publishing is not channel:
            return  # replaced already, after a concurrent publish's failure
        self._publishing = None
        self._answers.abandon()
        if self._warnings.due("publishing channel"):  # a failover nacks many publishes
            log.warning("publishing on %s: the channel nacked or stalled; going on with a fresh one", self.url)
        if not channel.is_closed:
            task = asyncio.ensure_future(_close_channel(channel, "a replaced publishing channel"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _publish_once(
        self,
        channel: Any,
        answers: _Answers,
        exchange: str,
        routing_key: str,
        messages: list[Outgoing],
        returned: list[str],
        refused: list[str],
    ) -> tuple[list[Outgoing], bool]:
        """One pipelined round on `channel`: sorts the outcomes into `returned` and
        `refused`, and gives back the messages left unconfirmed, and whether the round
        got stuck."""
        if not messages:
            return [], False
        tasks = [
            asyncio.ensure_future(
                channel.basic_publish(
                    m.body, exchange=exchange, routing_key=routing_key, properties=m.properties, mandatory=True
                )
            )
            for m in messages
        ]
        for task in tasks:
            answers.sent(task)
        stuck = not await _while_progressing(tasks, self._publish_timeout)
        lost = []
        for m, task in zip(messages, tasks):
            if not task.done() or task.cancelled():
                task.cancel()
                lost.append(m)
            elif isinstance(task.exception(), aiormq.exceptions.DeliveryError):
                refused.append(m.id)
            elif task.exception() is not None:
                lost.append(m)
            elif not isinstance(task.result(), aiormq.spec.Basic.Ack):
                returned.append(m.id)
        return lost, stuck

    async def _delay_levels(self, kind: str) -> None:
        if kind not in self._delay_kinds:
            async with self._scratch() as channel:
                await delays.declare_levels(channel, kind)
            self._delay_kinds.add(kind)

    async def _delayed(self, queue: str, messages: list[Outgoing], delay: float) -> None:
        """Publish messages carrying `delays.TARGET` through the delay levels of the
        queue's kind; they reach `queue` after `delay` seconds."""
        count = delays.units(delay)
        kind = self._specs[queue].kind if queue in self._specs else "classic"
        await self._delay_levels(kind)
        if queue not in self._delay_targets:
            async with self._scratch() as channel:
                await delays.bind_target(channel, queue, kind)
            self._delay_targets.add(queue)
        prefix = delays.prefix_for(kind)
        await self._confirmed(
            delays.entry(prefix, count), delays.routing_key(count), messages, f"the delay levels for {queue!r}"
        )

    async def _republish(self, queue: str, message: Outgoing) -> None:
        await self._confirmed("", queue, [message], f"queue {queue!r}")


class _Answers:
    """How a publishing channel answers: which publishes await their confirm (or nack),
    and when it last answered one or was given one to a channel that owed none."""

    def __init__(self) -> None:
        self._waiting: set[asyncio.Future[Any]] = set()
        self._since = asyncio.get_running_loop().time()

    def sent(self, task: asyncio.Future[Any]) -> None:
        if not self._waiting:
            self._since = asyncio.get_running_loop().time()
        self._waiting.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Future[Any]) -> None:
        self._waiting.discard(task)
        self._since = asyncio.get_running_loop().time()

    def stalled(self) -> bool:
        """Publishes await an answer and none came for `STALLED_AFTER` seconds."""
        return bool(self._waiting) and asyncio.get_running_loop().time() - self._since > STALLED_AFTER

    def abandon(self) -> None:
        """Cancel every publish still awaiting an answer: its round counts it as lost."""
        for task in list(self._waiting):
            task.cancel()


async def _close_channel(channel: aio_pika.Channel, what: str) -> None:
    """Close `channel`, waiting at most `CLOSE_TIMEOUT` for the broker."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await channel.close()
    except _GONE as exc:
        log.debug("closing the channel of %s: %r", what, exc)


async def _while_progressing(tasks: list[asyncio.Future[Any]], timeout: float) -> bool:
    """Wait for every task, giving up once none has finished for `timeout` seconds: a
    big batch on a busy broker is slow, not stuck. True when all finished."""
    left = len(tasks)
    progress = asyncio.Event()

    def finished(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        progress.set()

    for task in tasks:
        task.add_done_callback(finished)
    try:
        while left:
            progress.clear()
            try:  # not wait_for: on Python 3.11 it swallows a cancel that comes as the event is set
                async with asyncio.timeout(timeout):
                    await progress.wait()
            except TimeoutError:
                return False
    except asyncio.CancelledError:  # the caller gives up on them: none may fail unheard later
        for task in tasks:
            task.cancel()
            task.add_done_callback(_retrieved)
        raise
    return True


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a task's outcome seen, so asyncio logs no "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


class _RabbitDelivery(Delivery):
    __slots__ = ("_consumer", "_raw")

    def __init__(self, consumer: _RabbitConsumer, raw: AbstractIncomingMessage, message: Message, attempt: int) -> None:
        super().__init__(message, consumer.queue, attempt)
        self._consumer = consumer
        self._raw = raw

    @property
    def key(self) -> str:
        return self.message.ordering_key or ""

    def stale(self) -> bool:
        """The channel it came on is gone (closed, or replaced by a reconnect): the
        broker has put the message back already."""
        try:
            _ = self._raw.channel  # raises once the channel is gone
        except aiormq.exceptions.ChannelInvalidStateError:
            return True
        return False

    async def _basic_ack(self) -> None:
        """Queue the ack frame without waiting for the socket to drain: AMQP does not
        answer an ack, and the wait would cost a loop turn per message."""
        tag = self._raw.delivery_tag
        assert tag is not None  # set on every message a consumer receives
        await self._raw.channel.basic_ack(delivery_tag=tag, wait=False)

    async def _ack(self) -> None:
        consumer = self._consumer
        consumer.check_live(self)
        try:
            await self._basic_ack()
        except _GONE as exc:
            raise consumer.released(self) from exc
        finally:
            consumer.finished(self)

    async def _retry(self, delay: float) -> None:
        consumer = self._consumer
        spec = consumer.spec
        if spec is not None and self.attempt >= spec.retry.max_attempts:
            await consumer.settle(self, self._to_dead_letter_queue(h.DELIVERY_LIMIT_EXCEEDED, None))
        else:
            await self._again(delay, self.attempt + 1)

    async def _postpone(self, delay: float) -> None:
        await self._again(delay, self.attempt)

    async def _again(self, delay: float, attempt: int) -> None:
        consumer = self._consumer
        if consumer.spec is not None and consumer.spec.ordered:
            consumer.hold(self, delay, attempt)
        else:
            await consumer.settle(self, self._requeue(delay, attempt))

    async def _release(self, delay: float) -> None:
        """After `delay`: a copy through the delay levels (attempt + 1), the original
        acked; at once (or when that copy is not taken): a nack with requeue, and the
        broker puts the message back where it was."""
        self._consumer.finished(self)
        if self.stale():
            return  # its channel is gone, so the broker has it back already
        if delay > 0:
            try:
                await self._requeue(delay, self.attempt + 1)
                return
            except (*_GONE, PublishFailed) as exc:
                log.warning("could not delay the return of %s (%r); it goes back at once", self.message.id, exc)
                if self.stale():
                    return
        tag = self._raw.delivery_tag
        assert tag is not None  # set on every message a consumer receives
        try:
            await self._raw.channel.basic_nack(delivery_tag=tag, requeue=True, wait=False)
        except _GONE as exc:
            log.debug("releasing %s: %r (its channel is gone, so it is back)", self.message.id, exc)

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        if self.queue in self._consumer.broker._dead_letter_queues:
            raise TopologyError(f"{self.queue!r} is a dead-letter queue; it has no dead-letter queue of its own")
        await self._consumer.settle(self, self._to_dead_letter_queue(reason, error))

    async def _requeue(self, delay: float, attempt: int) -> None:
        broker = self._consumer.broker
        if delay > 0:
            copy = republished(self._raw, self.message, {ATTEMPT: attempt, delays.TARGET: self.queue})
            await broker._delayed(self.queue, [copy], delay)
        else:
            await broker._republish(self.queue, republished(self._raw, self.message, {ATTEMPT: attempt}))
        await self._basic_ack()

    async def _to_dead_letter_queue(
        self, reason: str, error: BaseException | None, attempts: int | None = None
    ) -> None:
        spec = self._consumer.spec
        target = spec.dead_letter_queue if spec else f"{self.queue}.dlq"
        copy = self._dead_letter_copy(reason, error, self.attempt if attempts is None else attempts)
        await self._consumer.broker._republish(target, copy)
        await self._basic_ack()

    def _dead_letter_copy(self, reason: str, error: BaseException | None, attempts: int) -> Outgoing:
        """The stamped copy, its reason and traceback cut to what the connection's frame
        leaves beside the message's own properties (`STAMP_ROOM` kept for the stamp's
        other fields): every header travels in one frame. Raises `PublishFailed` rather
        than send a copy the broker would answer by closing the connection."""
        frame_max = self._consumer.broker.frame_max
        room = frame_max - header_frame_size(republished(self._raw, self.message, {})) - STAMP_ROOM
        stamp = h.dead_letter_stamp(self.message.topic, self.queue, attempts, reason, error, room)
        copy = republished(self._raw, self.message, stamp)
        size = header_frame_size(copy)
        if size > frame_max:
            raise PublishFailed(
                f"a dead letter needing a {size}-byte header frame was not sent (the connection takes {frame_max})",
                [self.message.id],
            )
        return copy


class _RabbitConsumer(Consumer):
    """Deliveries arrive through aio-pika's callback into a local buffer; `__anext__`
    hands them out. On an ordered queue one delivery per ordering key is out at a time:
    the rest of that key wait here (unacked, within the prefetch)."""

    def __init__(self, broker: RabbitBroker, queue: str, spec: Queue | None, prefetch: int) -> None:
        self.broker = broker
        self.queue = queue
        self.spec = spec
        self.prefetch = prefetch
        self._ordered = spec is not None and spec.ordered
        self._ready: deque[_RabbitDelivery] = deque()
        self._held: set[_RabbitDelivery] = set()
        self._busy: set[str] = set()
        self._backlog: dict[str, deque[_RabbitDelivery]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._waiter: asyncio.Future[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        #: watches the channel and opens a new one when it closes (`_reopen_when_closed`)
        self._keeper: asyncio.Task[None] | None = None
        #: why the consumer could not open again; `__anext__` raises it
        self._failure: Exception | None = None
        self._channel: Any = None
        self._source: Any = None
        self._tag: str | None = None
        self._stopped = False
        self._closed = False

    async def __anext__(self) -> Delivery:
        await self._opened()
        while True:
            if self._stopped or self.broker._closed:
                raise StopAsyncIteration
            if self._failure is not None:
                raise self._failure
            while self._ready:
                delivery = self._ready.popleft()
                if delivery.stale():
                    self._release_key(delivery.key)
                    continue
                self._held.add(delivery)
                return delivery
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def _opened(self) -> None:
        """Open the consumer on first use. A connection lost while opening, or an opening
        the broker does not answer within `OPEN_TIMEOUT`, is waited out (the connection
        comes back by itself) and the opening tried again; `stop` or `close` meanwhile
        ends the consumer instead."""
        warned = False
        while True:
            if self._stopped or self._closed or self.broker._closed:
                raise StopAsyncIteration
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open())
            try:
                await asyncio.shield(self._opening)  # a cancelled wait leaves the opening be
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if (self._closed or self._stopped) and task is not None and not task.cancelling():
                    raise StopAsyncIteration from None  # `close` cut the opening short: the end
                raise
            except _LOST_WHILE_OPENING as exc:
                self._opening = None
                if not warned:
                    log.warning("consumer of %s could not open (%r); opening again", self.queue, exc)
                    warned = True
            # until reconnected, look again every pause (a lost connection may not say so yet)
            await asyncio.sleep(_REOPEN_PAUSE)
            while not self.broker._connection.connected.is_set() and not (self._stopped or self._closed):  # noqa: ASYNC110
                await asyncio.sleep(_REOPEN_PAUSE)

    async def _open(self) -> None:
        """Consume on a channel of the consumer's own, every step bounded by
        `OPEN_TIMEOUT`. Not aio-pika's robust channel: the robust connection restores
        those one after another inside its reconnect with no time bound, so a step the
        broker left unanswered would hold up every other channel and the reconnect."""
        step = "checking the queue"
        channel = aio_pika.Channel(self.broker._connection, publisher_confirms=False)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                await self.broker._check_queue(self.queue)
                step = "opening a channel"
                try:
                    await channel.initialize()
                except RuntimeError:  # aiormq: the connection it was to use has closed
                    raise ConnectionError("the connection closed while a channel was opening") from None
                step = "basic.qos"
                await channel.set_qos(prefetch_count=self.prefetch)
                step = "queue.declare"
                try:
                    source = await channel.declare_queue(self.queue, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    self.broker._known_queues.discard(self.queue)
                    raise UnknownQueue(f"queue {self.queue!r} is not declared (deleted?)") from None
                step = "basic.consume"
                tag = await source.consume(self._on_message)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                log.warning("consumer of %s: no answer to %s within %gs", self.queue, step, OPEN_TIMEOUT)
            if channel.is_initialized:
                await _close_channel(channel, f"a failed opening of the consumer of {self.queue}")
            raise
        self._channel, self._source, self._tag = channel, source, tag
        if self._stopped:  # `stop` came while opening: take no more messages on the new consumer
            self._spawn(self._cancel())
        (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(self._on_cancelled)
        self._keeper = asyncio.ensure_future(self._reopen_when_closed(channel))

    async def _on_cancelled(self, frame: Any) -> None:
        """The broker cancelled the consumer (its queue deleted, a node gone): close its
        channel and open again, even if the close goes unanswered (then the channel never
        says it closed)."""
        channel = self._channel
        if frame.consumer_tag != self._tag or channel is None or channel.is_closed:
            return
        log.warning("consumer of %s was cancelled by the broker; opening again", self.queue)
        if self._keeper is not None:
            self._keeper.cancel()
        self._keeper = asyncio.ensure_future(self._reopen_after_cancel(channel))

    async def _reopen_after_cancel(self, channel: aio_pika.Channel) -> None:
        await _close_channel(channel, f"the cancelled consumer of {self.queue}")
        await self._reopen()

    async def _reopen_when_closed(self, channel: aio_pika.Channel) -> None:
        """Once the consumer's channel closes (its connection dropped, the broker closed
        it), consume on a new one; what the old one held goes back to the queue."""
        await channel.closed()
        await self._reopen()

    async def _reopen(self) -> None:
        """Consume on a new channel. An opening that fails for good (the queue is gone)
        ends the consumer with its error."""
        if self._stopped or self._closed or self.broker._closed:
            return
        log.warning("consumer of %s lost its channel; opening a new one", self.queue)
        self._opening = None
        try:
            await self._opened()
        except StopAsyncIteration:
            return
        except Exception as exc:
            log.error("consumer of %s could not open again: %r", self.queue, exc)
            self._failure = exc
            self._wake()

    async def _on_message(self, raw: AbstractIncomingMessage) -> None:
        if self._closed:
            return  # closing the channel puts it back
        message = from_amqp(raw, orphaned=self.queue == delays.ORPHANS)
        try:
            attempt, returns = attempt_of(raw)
        except ValueError as exc:  # a plain client's header we cannot read: never runs, never stalls
            unread = _RabbitDelivery(self, raw, message, 1)
            self._spawn(self._dead_letter_unrun(unread, f"unreadable reserved header: {exc}", exc, 1))
            return
        delivery = _RabbitDelivery(self, raw, message, attempt)
        # back from the broker more often than the queue allows: its handler keeps crashing
        # the worker. A first delivery always runs, whatever attempt its headers claim.
        if self.spec is not None and returns and attempt > self.spec.retry.max_attempts:
            self._spawn(self._dead_letter_unrun(delivery, h.DELIVERY_LIMIT_EXCEEDED, None, attempt - 1))
            return
        if self._ordered:
            if delivery.key in self._busy:
                self._backlog.setdefault(delivery.key, deque()).append(delivery)
                return
            self._busy.add(delivery.key)
        self._push(delivery)

    async def _dead_letter_unrun(
        self, delivery: _RabbitDelivery, reason: str, error: BaseException | None, attempts: int
    ) -> None:
        """Dead-letter a message without handing it out. If that fails (the dead-letter
        queue is gone) it goes back to the queue after a growing pause
        (`mailbag.broker.backoff`): held unacked meanwhile, then nacked, it stays the
        message the broker returned, so it comes back counted as returned (and with its
        unreadable header) and never runs; a copy would arrive as a first delivery and
        run. Closing the consumer ends the pause, and the channel's close returns it."""
        message_id = delivery.message.id
        try:
            await delivery._to_dead_letter_queue(reason, error, attempts=attempts)
        except (*_GONE, PublishFailed) as exc:
            pause = RETURNS.failed(delivery.queue, message_id)
            log.warning(
                "could not dead-letter message %s (%s), it goes back in %gs: %r", message_id, reason, pause, exc
            )
            await asyncio.sleep(pause)
            await delivery._release(0)
        else:
            RETURNS.settled(delivery.queue, message_id)

    def _push(self, delivery: _RabbitDelivery) -> None:
        self._ready.append(delivery)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- settlement, called by deliveries -------------------------------------

    def check_live(self, delivery: _RabbitDelivery) -> None:
        if self._closed or delivery not in self._held or delivery.stale():
            raise self.released(delivery)

    def released(self, delivery: _RabbitDelivery) -> DeliveryReleased:
        self.finished(delivery)
        return DeliveryReleased(f"message {delivery.message.id} went back to {self.queue!r} when its channel closed")

    def finished(self, delivery: _RabbitDelivery) -> None:
        if delivery in self._held:
            self._held.discard(delivery)
            if self._ordered:
                self._release_key(delivery.key)

    async def settle(self, delivery: _RabbitDelivery, work: Awaitable[None]) -> None:
        """Run a settlement that publishes, then acks, to its end even if the caller is
        cancelled: the copy and the ack belong together."""
        try:
            self.check_live(delivery)
        except DeliveryReleased:
            work.close()  # type: ignore[attr-defined]
            raise
        task = asyncio.ensure_future(work)
        task.add_done_callback(lambda _: self.finished(delivery))
        try:
            await asyncio.shield(task)
        except _GONE as exc:
            raise DeliveryReleased(
                f"message {delivery.message.id}: its channel closed during settlement, so it goes back "
                f"to {self.queue!r} (a copy may already be published)"
            ) from exc

    def hold(self, delivery: _RabbitDelivery, delay: float, attempt: int) -> None:
        """Hand the same message out again after `delay` as `attempt`, its key held meanwhile."""
        self.check_live(delivery)
        self._held.discard(delivery)
        again = _RabbitDelivery(self, delivery._raw, delivery.message, attempt)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            if again.stale():
                self._release_key(again.key)
            else:
                self._push(again)

        timer = loop.call_later(delay, due)
        self._timers.add(timer)

    def _release_key(self, key: str) -> None:
        if not self._ordered:
            return
        waiting = self._backlog.get(key)
        while waiting:
            following = waiting.popleft()
            if not following.stale():
                self._push(following)
                return
        self._backlog.pop(key, None)
        self._busy.discard(key)

    # -- lifecycle ------------------------------------------------------------

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._wake()
        if self._tag is not None and not self._closed and self.broker._connection.connected.is_set():
            self._spawn(self._cancel())

    async def _cancel(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._source.cancel(self._tag)
        except _GONE as exc:
            log.debug("cancelling consumer of %s: %r", self.queue, exc)

    async def close(self) -> None:
        if self._closed:
            return
        self.stop()
        self._closed = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._ready.clear()
        self._backlog.clear()
        self._held.clear()
        for task in (self._keeper, self._opening):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (self._keeper, self._opening) if t is not None), return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.gather(*self._background, return_exceptions=True)
                if self._channel is not None and self.broker._connection.connected.is_set():
                    await self._channel.close()  # the broker takes back everything unacked
        except _GONE as exc:
            log.warning("closing consumer of %s: %r; its connection returns what it held", self.queue, exc)
        finally:
            for task in self._background:
                task.cancel()  # a dead-letter publish cut short: its message stays unacked and comes back
            self.broker._consumers.discard(self)


_CONNECT_ERRORS = (ConnectionError, OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPConnectionError)

#: query options of an amqp:// URL: aio-pika's and aiormq's own, `wait`, the seconds to
#: keep trying the first connection (what `open_broker(wait=)` takes), and `queue`, the
#: queue type of every queue declared (`mailbag.broker.url.queue_kind`)
_OPTIONS = frozenset(p.name for p in aio_pika.RobustConnection.PARAMETERS) | {
    "auth",
    "cadata",
    "cafile",
    "capath",
    "certfile",
    "heartbeat",
    "keyfile",
    "name",
    "no_verify_ssl",
    "queue",
    "timeout",
    "wait",
}


#: AMQP heartbeat in seconds unless the URL sets `?heartbeat=N`. A connection silent for
#: three heartbeats and one check counts as dead (about 35 s here; aiormq's own default of
#: 60 s took over 3 minutes), then the robust connection reconnects.
DEFAULT_HEARTBEAT = 10


def with_heartbeat(url: str) -> str:
    """`url` with the default heartbeat unless it names one."""
    parsed = yarl.URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=DEFAULT_HEARTBEAT))


async def open_broker(
    url: str,
    *,
    connect_timeout: float = 10.0,
    wait: float | None = None,
    reconnect_interval: float = 1.0,
    publish_timeout: float = 30.0,
) -> RabbitBroker:
    """Connect to the RabbitMQ at `url`. The first connection fails fast with
    `BrokerUnavailable` when the broker is down, unless `wait` (or the URL's `?wait=`)
    gives the seconds to keep trying (with backoff). Later drops reconnect on their own,
    every `reconnect_interval` seconds. A URL may list the nodes of a cluster
    (`amqp://u:p@node1:5672,node2:5672/vhost`): the first that answers is used, and a
    reconnect goes to the next node in turn (`cluster.FailoverConnection`). A
    connection that goes silent (a half-open TCP connection, a blackholed network) is
    noticed within three heartbeats (`DEFAULT_HEARTBEAT`, or `?heartbeat=N` in the URL).
    `publish_timeout` bounds how long a publish waits for its confirms, a reconnect
    included. `?queue=quorum` declares every queue as a quorum queue. An unknown URL
    option is a `BrokerUrlError`."""
    wait = _wait_of(url, check_options(url, _OPTIONS), wait)
    kind = queue_kind(url)
    nodes = [with_heartbeat(n) for n in node_urls(url)]
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_delay(wait),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            retry=retry_if_exception_type(_CONNECT_ERRORS) & retry_if_not_exception_type(_REFUSED),
            reraise=True,
        ):
            with attempt:
                connection = await _connect_any(nodes, connect_timeout, reconnect_interval)
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(f"RabbitMQ at {mask_url(url)} refused the login; check the user and password") from None
    except _REFUSED:
        vhost = unquote(urlsplit(url).path[1:]) or "/"
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(url)} refused the connection: check that vhost {vhost!r} exists "
            "and that the user may use it (rabbitmqctl list_permissions -p VHOST)"
        ) from None
    except _CONNECT_ERRORS as exc:
        waited = f" after trying for {wait:g}s" if wait else ""
        raise BrokerUnavailable(
            f"RabbitMQ at {mask_url(url)} is unreachable{waited} ({type(exc).__name__}); "
            f"start it (e.g. `rabbitmq-server -detached`) or add ?wait=SECONDS to the URL to keep trying"
        ) from None
    return RabbitBroker(url, connection, publish_timeout, kind)


#: the broker answered and said no (a login, a vhost): trying again cannot help
_REFUSED = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.ProtocolSyntaxError,
)


def _wait_of(url: str, options: dict[str, str], given: float | None) -> float:
    """The seconds to keep trying the first connection: the keyword wins over `?wait=`."""
    if given is not None:
        return given
    raw = options.get("wait", "0")
    try:
        seconds = float(raw)
    except ValueError:
        raise BrokerUrlError(f"{mask_url(url)}: wait must be a number of seconds, got {raw!r}") from None
    if seconds < 0:
        raise BrokerUrlError(f"{mask_url(url)}: wait must be >= 0, got {raw!r}")
    return seconds


async def _connect_any(nodes: list[str], timeout: float, reconnect_interval: float) -> FailoverConnection:
    """A connection to the first of `nodes` that answers, failing over between them later."""
    for i in range(len(nodes)):
        try:
            # the node list goes to the class, not through connect_robust's keywords, which
            # it writes into the connection's URL: their passwords would show in its repr
            failover = functools.partial(FailoverConnection, nodes=nodes[i:] + nodes[:i])
            connection = await aio_pika.connect_robust(
                nodes[i],
                timeout=timeout,
                reconnect_interval=reconnect_interval,
                connection_class=cast(type[FailoverConnection], failover),
            )
        except _CONNECT_ERRORS:
            if i == len(nodes) - 1:
                raise
        else:
            assert isinstance(connection, FailoverConnection)
            return connection
    raise AssertionError("unreachable")
