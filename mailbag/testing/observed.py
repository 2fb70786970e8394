"""The broker a `TestBus` hands its worker: every call goes through to the real broker,
and the bus learns what happened (each delivery taken and how it was settled, what the
handlers published). With a `prefix`, every topic and queue name carries it on the
broker and nowhere else, so tests can share one RabbitMQ. On SNS/SQS in virtual time,
retry delays and postponements are timed on the bus's clock instead of SQS's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from mailbag.broker import Broker, Delivery, Message, Queue, Topology
from mailbag.broker import headers as h
from mailbag.broker.base import Consumer, QueueStats
from mailbag.broker.clock import ManualClock
from mailbag.broker.delegating import Declaring
from mailbag.broker.memory import MemoryBroker
from mailbag.workers.context import Context
from mailbag.workers.middleware import Call

Status = Literal["handled", "dead_lettered", "pending"]


@dataclass
class Track:
    """What the bus knows of one message on one queue."""

    status: Status = "pending"
    attempts: int = 0
    runs: int = 0
    reason: str | None = None
    error: BaseException | None = None
    #: copies sent straight to the queue (a postponement, a replay)
    sends: int = 0


class Observed(Declaring):
    """`inner`, watched. `clock` is the bus's virtual clock (None: real time). What is
    declared through it is kept, under the names it has on the broker, for
    `remove_declared`. Closing it leaves `inner` open: it belongs to the bus."""

    def __init__(self, inner: Broker, *, prefix: str = "", clock: ManualClock | None = None) -> None:
        super().__init__(inner)
        self.prefix = prefix
        self.clock = clock
        #: (message id, queue) -> what happened to it
        self.tracks: dict[tuple[str, str], Track] = {}
        #: what the handlers published, in order (names without the prefix)
        self.published: list[Message] = []
        #: queues consumed through this broker, and their specs
        self.consumed: set[str] = set()
        self.specs: dict[str, Queue] = {}
        #: deliveries handed out and not yet settled
        self.unsettled = 0
        #: bumped by every delivery taken or settled and every publish: progress
        self.version = 0
        self._timers: set[asyncio.Task[None]] = set()

    # -- what the bus reads --------------------------------------------------------

    @property
    def timers(self) -> int:
        """Retries and postponements waiting on the virtual clock (SNS/SQS)."""
        return len(self._timers)

    def track(self, message_id: str, queue: str) -> Track:
        return self.tracks.setdefault((message_id, queue), Track())

    def local(self, name: str) -> str:
        return name.removeprefix(self.prefix) if self.prefix else name

    def remote(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def publish_from_test(self, topic: str, messages: Sequence[Message]) -> None:
        """A publish by the test itself: watched, but not one of the handlers' follow-ups."""
        async with self._expecting(topic, messages):
            await self.inner.publish(self.remote(topic), [self._inward(m) for m in messages])

    # -- the contract, passed through ---------------------------------------------

    async def declare(self, topology: Topology) -> None:
        for queue in topology.queues:
            self.specs[queue.name] = queue
        if self.prefix:
            topology = Topology(
                queues=tuple(self._prefixed(q) for q in topology.queues),
                topics=tuple(self.remote(t) for t in topology.topics),
            )
        await super().declare(topology)

    async def remove(self, topology: Topology) -> None:
        for queue in topology.queues:
            self.specs.pop(queue.name, None)
        if self.prefix:
            topology = Topology(
                queues=tuple(self._prefixed(q) for q in topology.queues),
                topics=tuple(self.remote(t) for t in topology.topics),
            )
        await self.inner.remove(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        async with self._expecting(topic, messages):
            await self.inner.publish(self.remote(topic), [self._inward(m) for m in messages], mandatory=mandatory)
        self.published.extend(messages)

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        for m in messages if queue in self.consumed else ():
            track = self.track(m.id, queue)
            track.status, track.sends = "pending", track.sends + 1
        self.version += 1
        inward = [self._inward(m) for m in messages]
        if delay > 0 and self.clock is not None and not isinstance(self.inner, MemoryBroker):
            self._at(delay, lambda: self.inner.send(self.remote(queue), inward))
            return
        await self.inner.send(self.remote(queue), inward, delay=delay)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        self.consumed.add(queue)
        return _Consumer(self, self.inner.consume(self.remote(queue), prefetch), queue)

    async def stats(self, queue: str) -> QueueStats:
        return replace(await self.inner.stats(self.remote(queue)), queue=queue)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        return [self._outward(m) for m in await self.inner.browse(self.remote(queue), limit)]

    async def purge(self, queue: str) -> int:
        return await self.inner.purge(self.remote(queue))

    async def queue_names(self) -> list[str] | None:
        names = await self.inner.queue_names()
        if names is None:
            return None
        return [self.local(n) for n in names if n.startswith(self.prefix)]

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        await asyncio.gather(*self._timers, return_exceptions=True)

    # -- internals -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _expecting(self, topic: str, messages: Sequence[Message]) -> AsyncIterator[None]:
        """Each message is pending on every consumed queue that takes it from before the
        broker has it (it may be handled before the publish returns) unless the publish fails."""
        self.version += 1
        before: dict[tuple[str, str], Status] = {}
        for queue in self.consumed:
            subscriptions = [s for s in self.specs[queue].subscriptions if s.topic == topic]
            for m in messages:
                if any(s.matches(m.headers) for s in subscriptions):
                    track = self.track(m.id, queue)
                    before[m.id, queue], track.status = track.status, "pending"
        try:
            yield
        except BaseException:
            for key, status in before.items():
                self.tracks[key].status = status
            raise

    def _at(self, delay: float, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `action` once `delay` seconds of the virtual clock have passed."""
        assert self.clock is not None
        due = self.clock.now() + delay

        async def later() -> None:
            await self.clock.sleep_until(due)  # type: ignore[union-attr]
            await action()

        timer = asyncio.create_task(later())
        self._timers.add(timer)
        timer.add_done_callback(self._timers.discard)

    def _prefixed(self, queue: Queue) -> Queue:
        subscriptions = tuple(replace(s, topic=self.remote(s.topic)) for s in queue.subscriptions)
        return replace(
            queue,
            name=self.remote(queue.name),
            subscriptions=subscriptions,
            dead_letter_queue=self.remote(queue.dead_letter_queue),
        )

    def _inward(self, message: Message) -> Message:
        return message.evolve(topic=self.remote(message.topic)) if self.prefix else message

    def _outward(self, message: Message) -> Message:
        if not self.prefix:
            return message
        headers = dict(message.headers)
        for name in (h.ORIGIN_QUEUE, h.ORIGIN_TOPIC):
            if isinstance(headers.get(name), str):
                headers[name] = self.local(str(headers[name]))
        return message.evolve(topic=self.local(message.topic), headers=headers)


class _Consumer(Consumer):
    def __init__(self, observed: Observed, inner: Consumer, queue: str) -> None:
        self.observed = observed
        self.inner = inner
        self.queue = queue

    async def __anext__(self) -> Delivery:
        delivery = await self.inner.__anext__()
        self.observed.unsettled += 1
        self.observed.version += 1
        return _Delivery(self.observed, delivery, self.queue)

    def stop(self) -> None:
        self.inner.stop()

    async def close(self) -> None:
        await self.inner.close()


class _Delivery(Delivery):
    """A delivery whose settlement the bus records once the broker took it."""

    __slots__ = ("_inner", "_observed", "_sends", "_track")

    def __init__(self, observed: Observed, inner: Delivery, queue: str) -> None:
        super().__init__(observed._outward(inner.message), queue, inner.attempt)
        self._observed = observed
        self._inner = inner
        self._track = observed.track(self.message.id, queue)
        self._sends = self._track.sends

    async def _ack(self) -> None:
        async with self._settling():
            await self._inner.ack()
        if self._track.sends == self._sends:  # else it was put back as a copy: still pending
            self._finish("handled", None, None)

    async def _retry(self, delay: float) -> None:
        async with self._settling():
            await self._inner.retry(delay)
        self._track.attempts = self.attempt
        self._show_after(delay)

    async def _postpone(self, delay: float) -> None:
        async with self._settling():
            await self._inner.postpone(delay)
        self._show_after(delay)

    async def _release(self, delay: float) -> None:
        await self._inner.release(delay)
        self._show_after(delay)

    def _show_after(self, delay: float) -> None:
        receipt = getattr(self._inner, "receipt", None)
        observed = self._observed
        if observed.clock is not None and receipt is not None:
            # SNS/SQS hides it for `delay` real seconds; the virtual clock shows it sooner
            hide = observed.inner.hide  # type: ignore[attr-defined]
            queue = observed.remote(self.queue)
            observed._at(delay, lambda: hide(queue, {receipt: 0}))

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        async with self._settling():
            await self._inner.dead_letter(reason, error)
        self._finish("dead_lettered", reason, error)

    def _finish(self, status: Status, reason: str | None, error: BaseException | None) -> None:
        track = self._track
        track.status, track.attempts, track.reason = status, self.attempt, reason
        if error is not None:
            track.error = error

    def _settling(self) -> _Settling:
        return _Settling(self._observed)


class _Settling:
    """Around a settlement: the delivery is no longer held, whether the broker took it
    or not (if not, it comes back)."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        self.observed.unsettled -= 1
        self.observed.version += 1


class Recorder:
    """Innermost middleware: counts the handler's runs and keeps its last error."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        track = self.observed.track(ctx.message_id, ctx.queue)
        track.runs += 1
        try:
            return await call_next(ctx)
        except Exception as exc:
            track.error = exc
            raise
