"""The in-memory broker (`memory://`): the full broker semantics inside one process.

It is the embedded default for development, the demo and tests. Delays run on an
injectable clock (`ManualClock` in tests). Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import fields

from mailbag.broker import headers as h
from mailbag.broker.backoff import RETURNS
from mailbag.broker.base import Broker, Consumer, QueueStats
from mailbag.broker.clock import Clock, RealClock
from mailbag.broker.errors import BrokerClosed, DeliveryReleased, TopologyError, UnknownQueue, UnknownTopic
from mailbag.broker.message import Delivery, Message
from mailbag.broker.topology import Queue, Topology
from mailbag.broker.url import check_options

log = logging.getLogger("mailbag.broker.memory")


class _Entry:
    __slots__ = ("deliveries", "message")

    def __init__(self, message: Message, deliveries: int = 0) -> None:
        self.message = message
        self.deliveries = deliveries

    @property
    def group(self) -> str:
        return self.message.ordering_key or ""


class _QueueState:
    def __init__(self, name: str, spec: Queue | None) -> None:
        self.name = name
        self.spec = spec  # None for a dead-letter queue
        self.ready: deque[_Entry] = deque()
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.in_flight = 0
        self.busy_groups: set[str] = set()
        self.waiters: list[asyncio.Future[None]] = []

    @property
    def ordered(self) -> bool:
        return self.spec is not None and self.spec.ordered

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class MemoryBroker(Broker):
    def __init__(self, url: str = "memory://", *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock: Clock = clock or RealClock()
        self._topics: dict[str, list[tuple[Queue, _QueueState]]] = {}
        self._queues: dict[str, _QueueState] = {}
        self._consumers: set[_MemoryConsumer] = set()
        self._seq = itertools.count()
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self._rearm = asyncio.Event()

    # -- contract -------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        self._check_open()
        for spec in topology.queues:
            state = self._queues.get(spec.name)
            if state is None or state.spec is None:
                if state is not None:
                    raise TopologyError(f"{spec.name!r} is already declared as a dead-letter queue")
                self._queues[spec.name] = _QueueState(spec.name, spec)
            else:
                state.spec = _merge(state.spec, spec)
            dlq = spec.dead_letter_queue
            if dlq in self._queues and self._queues[dlq].spec is not None:
                raise TopologyError(f"{dlq!r} is already declared as a queue, not a dead-letter queue")
            self._queues.setdefault(dlq, _QueueState(dlq, None))
        for topic in topology.topics:
            self._topics.setdefault(topic, [])
        for spec in topology.queues:
            state = self._queues[spec.name]
            for topic in state.spec.topics:  # type: ignore[union-attr]
                routes = self._topics.setdefault(topic, [])
                routes[:] = [(s, q) for s, q in routes if q is not state] + [(state.spec, state)]  # type: ignore[list-item]

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self._check_open()
        routes = self._topics.get(topic)
        if routes is None:
            raise UnknownTopic(f"topic {topic!r} is not declared")
        for m in messages:
            if m.topic != topic:
                raise ValueError(f"message {m.id} is for topic {m.topic!r}, not {topic!r}")
        routed: set[str] = set()
        for spec, state in routes:
            subs = [s for s in spec.subscriptions if s.topic == topic]
            for m in messages:
                if any(s.matches(m.headers) for s in subs):
                    state.ready.append(_Entry(m))
                    routed.add(m.id)
            state.notify()
        self.unrouted.note(topic, [m.id for m in messages if m.id not in routed], mandatory=mandatory)

    async def remove(self, topology: Topology) -> None:
        self._check_open()
        gone = {name for spec in topology.queues for name in (spec.name, spec.dead_letter_queue)}
        for name in gone:
            self._queues.pop(name, None)
        for routes in self._topics.values():
            routes[:] = [(s, q) for s, q in routes if q.name not in gone]
        for topic in topology.topics:
            self._topics.pop(topic, None)

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        self._check_open()
        if delay < 0:
            raise ValueError(f"send delay must be >= 0, got {delay}")
        state = self._state(queue)
        if delay > 0:
            due = self.clock.now() + delay
            for m in messages:
                heapq.heappush(state.delayed, (due, next(self._seq), _Entry(m)))
            self._arm_timer()
            return
        state.ready.extend(_Entry(m) for m in messages)
        state.notify()

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        self._check_open()
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        consumer = _MemoryConsumer(self, self._state(queue), prefetch)
        self._consumers.add(consumer)
        return consumer

    async def stats(self, queue: str) -> QueueStats:
        state = self._state(queue)
        dead = len(self._queues[state.spec.dead_letter_queue].ready) if state.spec else 0
        return QueueStats(queue, len(state.ready), state.in_flight, len(state.delayed), dead)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        return [e.message for e in itertools.islice(self._state(queue).ready, limit)]

    async def purge(self, queue: str) -> int:
        state = self._state(queue)
        n = len(state.ready)
        state.ready.clear()
        return n

    async def queue_names(self) -> list[str]:
        return sorted(self._queues)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        if self._timer is not None:
            self._timer.cancel()
        for state in self._queues.values():
            state.notify()

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerClosed(f"broker {self.url} is closed")

    def _state(self, queue: str) -> _QueueState:
        try:
            return self._queues[queue]
        except KeyError:
            raise UnknownQueue(f"queue {queue!r} is not declared") from None

    def _take(self, state: _QueueState) -> _Entry | None:
        self._promote_due(state)
        while True:
            entry = self._pop_ready(state)
            if entry is None:
                return None
            entry.deliveries += 1
            spec = state.spec
            if spec is not None and entry.deliveries > spec.retry.max_attempts:
                self._exhausted(state, entry)
                continue
            state.in_flight += 1
            if state.ordered:
                state.busy_groups.add(entry.group)
            return entry

    @staticmethod
    def _pop_ready(state: _QueueState) -> _Entry | None:
        if not state.ordered:
            return state.ready.popleft() if state.ready else None
        for i, entry in enumerate(state.ready):
            if entry.group not in state.busy_groups:
                del state.ready[i]
                return entry
        return None

    def _settled(self, state: _QueueState, entry: _Entry, *, keep_group: bool = False) -> None:
        state.in_flight -= 1
        if state.ordered and not keep_group:
            state.busy_groups.discard(entry.group)
        state.notify()

    def _requeue(self, state: _QueueState, entry: _Entry, delay: float) -> None:
        if delay <= 0:
            self._settled(state, entry)
            (state.ready.appendleft if state.ordered else state.ready.append)(entry)
            state.notify()
            return
        # an ordered queue keeps the group blocked until the retried message is back
        self._settled(state, entry, keep_group=True)
        heapq.heappush(state.delayed, (self.clock.now() + delay, next(self._seq), entry))
        self._arm_timer()

    def _release(self, state: _QueueState, entries: list[_Entry]) -> None:
        for entry in reversed(entries):
            state.in_flight -= 1
            if state.ordered:
                state.busy_groups.discard(entry.group)
            state.ready.appendleft(entry)
        state.notify()

    def _exhausted(self, state: _QueueState, entry: _Entry) -> None:
        """A message back more often than its queue allows: dead-letter it unrun. While
        the dead-letter queue is gone it waits a growing pause (`mailbag.broker.backoff`)
        and is tried again."""
        try:
            self._to_dlq(state, entry, h.DELIVERY_LIMIT_EXCEEDED, None, attempts=entry.deliveries - 1)
        except UnknownQueue as exc:
            pause = RETURNS.failed(state.name, entry.message.id)
            log.warning(
                "could not dead-letter exhausted message %s, it stays on %s and is tried again in %gs: %s",
                entry.message.id,
                state.name,
                pause,
                exc,
            )
            entry.deliveries -= 1
            if state.ordered:
                state.busy_groups.add(entry.group)  # the rest of its key waits behind it
            heapq.heappush(state.delayed, (self.clock.now() + pause, next(self._seq), entry))
            self._arm_timer()
        else:
            RETURNS.settled(state.name, entry.message.id)

    def _to_dlq(
        self, state: _QueueState, entry: _Entry, reason: str, error: BaseException | None, *, attempts: int
    ) -> None:
        assert state.spec is not None
        dlq = self._queues.get(state.spec.dead_letter_queue)
        if dlq is None:
            raise UnknownQueue(f"dead-letter queue {state.spec.dead_letter_queue!r} of {state.name!r} is gone")
        message = entry.message
        stamp = h.dead_letter_stamp(message.topic, state.name, attempts, reason, error)
        dead = message.evolve(headers={**message.headers, **stamp})
        dlq.ready.append(_Entry(dead))
        dlq.notify()

    def _promote_due(self, state: _QueueState) -> None:
        now = self.clock.now()
        back: list[_Entry] = []
        while state.delayed and state.delayed[0][0] <= now:
            back.append(heapq.heappop(state.delayed)[2])
        if not back:
            return
        if state.ordered:
            for entry in reversed(back):
                state.busy_groups.discard(entry.group)
                state.ready.appendleft(entry)
        else:
            state.ready.extend(back)
        state.notify()

    def _arm_timer(self) -> None:
        if self._timer is None or self._timer.done():
            self._timer = asyncio.get_running_loop().create_task(self._run_timer())
        self._rearm.set()

    async def _run_timer(self) -> None:
        """Promote delayed messages when they fall due, so waiting consumers wake."""
        while not self._closed:
            for state in self._queues.values():
                self._promote_due(state)
            due = [s.delayed[0][0] for s in self._queues.values() if s.delayed]
            if not due:
                return
            self._rearm.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep_until(min(due)))
            rearm = asyncio.ensure_future(self._rearm.wait())
            try:
                await asyncio.wait({sleeper, rearm}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                rearm.cancel()


def _merge(old: Queue, new: Queue) -> Queue:
    """Subscriptions add up (like bindings); any other difference is a conflict."""
    for f in fields(Queue):
        if f.name in ("subscriptions", "name"):
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            raise TopologyError(
                f"queue {old.name!r} already exists with {f.name}={getattr(old, f.name)!r}; "
                f"redeclared with {f.name}={getattr(new, f.name)!r}"
            )
    subs = old.subscriptions + tuple(s for s in new.subscriptions if s not in old.subscriptions)
    return Queue(old.name, subs, old.retry, old.ordered, old.kind, old.dead_letter_queue)


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_entry")

    def __init__(self, consumer: _MemoryConsumer, entry: _Entry) -> None:
        super().__init__(entry.message, consumer.state.name, entry.deliveries)
        self._consumer = consumer
        self._entry = entry

    def _finish(self) -> _QueueState:
        if not self._consumer.unsettled.pop(self, False):
            raise DeliveryReleased(f"message {self.message.id} went back to {self.queue!r} when its consumer closed")
        return self._consumer.state

    async def _ack(self) -> None:
        state = self._finish()
        self._consumer.broker._settled(state, self._entry)

    async def _retry(self, delay: float) -> None:
        state = self._finish()
        self._consumer.broker._requeue(state, self._entry, delay)

    async def _postpone(self, delay: float) -> None:
        state = self._finish()
        self._entry.deliveries -= 1  # this try never ran
        self._consumer.broker._requeue(state, self._entry, delay)

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        if self._consumer.state.spec is None:
            raise TopologyError(f"{self.queue!r} is a dead-letter queue; it has no dead-letter queue of its own")
        if self not in self._consumer.unsettled:
            raise DeliveryReleased(f"message {self.message.id} went back to {self.queue!r} when its consumer closed")
        broker = self._consumer.broker
        broker._to_dlq(self._consumer.state, self._entry, reason, error, attempts=self._entry.deliveries)
        broker._settled(self._finish(), self._entry)

    async def _release(self, delay: float) -> None:
        if self in self._consumer.unsettled:
            self._consumer.broker._requeue(self._finish(), self._entry, delay)


class _MemoryConsumer(Consumer):
    def __init__(self, broker: MemoryBroker, state: _QueueState, prefetch: int) -> None:
        self.broker = broker
        self.state = state
        self.prefetch = prefetch
        self.unsettled: dict[_MemoryDelivery, bool] = {}
        self._stopped = False
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    async def __anext__(self) -> Delivery:
        while True:
            if self._stopped or self.broker._closed:
                raise StopAsyncIteration
            if len(self.unsettled) < self.prefetch:
                entry = self.broker._take(self.state)
                if entry is not None:
                    delivery = _MemoryDelivery(self, entry)
                    self.unsettled[delivery] = True
                    return delivery
            self._waiter = asyncio.get_running_loop().create_future()
            self.state.waiters.append(self._waiter)
            await self._waiter

    def stop(self) -> None:
        self._stopped = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stop()
        held = [d._entry for d in self.unsettled]
        self.unsettled.clear()
        if held:
            self.broker._release(self.state, held)
        self.broker._consumers.discard(self)


async def open_broker(url: str, *, clock: Clock | None = None) -> MemoryBroker:
    """A new, empty broker; `memory://` takes no options, so any is refused."""
    check_options(url, ())
    return MemoryBroker(url, clock=clock)
