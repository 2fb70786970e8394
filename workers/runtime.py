"""The worker: consumes an app's queues, runs handlers through the middleware chain
and settles each delivery by its outcome.

Outcome -> settlement: return -> ack; `Reject` or an undecodable / invalid payload ->
dead-letter at once with the reason; `RetryLater` -> back after its delay; any other
exception -> retry with the queue's backoff, dead-letter once attempts are used up.
Nothing a handler does stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from broker import Broker, BrokerError, Delivery
from broker.base import Consumer
from broker.codec import PayloadError, decode
from workers.app import App, Handler
from workers.context import Context
from workers.errors import Reject, RetryLater
from workers.middleware import Call, Middleware, chain

log = logging.getLogger("mailbag.worker")


class Worker:
    """Runs `app` against `broker`: at most `concurrency` handlers at once, each queue
    consumed with `prefetch` (default: `concurrency`) unsettled deliveries."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        *,
        concurrency: int = 10,
        prefetch: int | None = None,
        queues: Sequence[str] | None = None,
        grace_period: float = 30.0,
        middleware: Sequence[Middleware] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        unknown = set(queues or ()) - set(app.queues)
        if unknown:
            raise ValueError(f"app {app.name!r} has no queue {sorted(unknown)[0]!r}; it has {', '.join(app.queues)}")
        self.app = app
        self.broker = broker
        self.concurrency = concurrency
        self.prefetch = prefetch or concurrency
        self.queues = tuple(queues or app.queues)
        self.grace_period = grace_period
        self._middleware = list(middleware if middleware is not None else app.middleware)
        self._chains: dict[Handler, Call] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._consumers: list[Consumer] = []
        self._loops: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        topology = self.app.topology
        await self.broker.declare(topology)
        self._retry = {q.name: q.retry for q in topology.queues}
        for queue in self.queues:
            consumer = self.broker.consume(queue, prefetch=self.prefetch)
            self._consumers.append(consumer)
            self._loops.append(asyncio.create_task(self._consume(consumer), name=f"consume:{queue}"))

    async def run(self) -> None:
        """Start, then run until `stop()` is called."""
        await self.start()
        await self._stopped.wait()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period, cancel
        the rest, and return what was not settled to the broker."""
        grace = self.grace_period if grace_period is None else grace_period
        for consumer in self._consumers:
            consumer.stop()
        if self._loops:
            await asyncio.gather(*self._loops, return_exceptions=True)
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                log.warning("grace period over: %d handler(s) cancelled, their messages go back", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        for consumer in self._consumers:
            await consumer.close()
        self._consumers.clear()
        self._loops.clear()
        self._stopped.set()

    async def __aenter__(self) -> "Worker":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _consume(self, consumer: Consumer) -> None:
        async for delivery in consumer:
            await self._slots.acquire()
            task = asyncio.create_task(self.process(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def process(self, delivery: Delivery) -> None:
        """Handle one delivery and settle it. Never raises except on cancellation."""
        message = delivery.message
        handler = self.app.handler_for(delivery.queue, message.topic)
        try:
            if handler is None:
                await self._dead_letter(delivery, f"no handler for topic {message.topic!r} on queue {delivery.queue!r}")
                return
            try:
                payload = decode(message.body, message.content_type, handler.model)
            except PayloadError as exc:
                await self._dead_letter(delivery, str(exc), exc)
                return
            ctx = Context(delivery, self.broker, handler, payload)
            try:
                await self._chain(handler)(ctx)
            except asyncio.CancelledError:
                raise
            except Reject as exc:
                await self._dead_letter(delivery, str(exc) or "rejected by handler", exc)
            except RetryLater as exc:
                await delivery.retry(exc.delay)
            except Exception as exc:
                await self._failed(delivery, exc)
            else:
                await delivery.ack()
        except asyncio.CancelledError:
            raise
        except BrokerError as exc:
            # the broker could not take the settlement; the message comes back to us or another worker
            log.error(
                "settling failed",
                extra={"message_id": message.id, "queue": delivery.queue, "attempt": delivery.attempt, "error": repr(exc)},
            )

    def _chain(self, handler: Handler) -> Call:
        call = self._chains.get(handler)
        if call is None:
            call = self._chains[handler] = chain(self._middleware, handler)
        return call

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        policy = self._retry[delivery.queue]
        error = f"{type(exc).__name__}: {exc}"
        log.warning(
            "handler failed: %s",
            error,
            extra={"message_id": delivery.message.id, "queue": delivery.queue, "attempt": delivery.attempt},
        )
        if delivery.attempt < policy.max_attempts:
            await delivery.retry(policy.delay(delivery.attempt))
        else:
            await delivery.dead_letter(f"failed after {delivery.attempt} attempt(s): {error}", exc)

    async def _dead_letter(self, delivery: Delivery, reason: str, exc: BaseException | None = None) -> None:
        log.warning(
            "dead-lettered: %s",
            reason,
            extra={"message_id": delivery.message.id, "queue": delivery.queue, "attempt": delivery.attempt},
        )
        await delivery.dead_letter(reason, exc)

