"""The worker: consumes an app's queues, runs each delivery through the middleware
chain and settles it by the outcome.

Outcome -> settlement: a result -> ack; `Reject` (raised by the handler, or by the
retry middleware for a non-retryable error or the last attempt) or an undecodable /
invalid payload -> dead-letter at once with the reason; `RetryLater` -> back after its
delay, one attempt used; `Postpone` -> back after its delay without using one (see
`workers.attempts`). Nothing a handler does stops the worker.

Concurrency: at most `concurrency` handlers run at once; each queue's consumer holds at
most `prefetch` unsettled deliveries, so memory stays flat whatever the backlog. On an
ordered queue, deliveries with the same ordering key run one at a time, in order,
while different keys run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Mapping, Sequence

from broker import Broker, Delivery
from broker.base import Consumer
from broker.codec import PayloadError, decode
from workers.app import App, Handler
from workers.attempts import attempt_of, postponed_copy
from workers.context import Context
from workers.errors import Postpone, Reject, RetryLater
from workers.middleware import Call, Middleware, chain
from workers.middleware.defaults import default_chain
from workers.settings import WorkerSettings
from workers.stores import IdempotencyStore, TransactionalStore, open_store

log = logging.getLogger("mailbag.worker")


class Worker:
    """Runs `app` against `broker`. Settings come from `settings` (default: the
    `MAILBAG_*` environment), and the keyword arguments override them. `middleware`
    replaces the app's own middleware (it still runs inside the built-in chain).
    `store` is the idempotency store (default: opened from the settings, and closed
    with the worker)."""

    def __init__(
        self,
        app: App,
        broker: Broker,
        *,
        concurrency: int | None = None,
        prefetch: int | None = None,
        queues: Sequence[str] | None = None,
        grace_period: float | None = None,
        middleware: Sequence[Middleware] | None = None,
        settings: WorkerSettings | None = None,
        store: IdempotencyStore | None = None,
    ) -> None:
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "concurrency": concurrency,
                "prefetch": prefetch,
                "queues": tuple(queues) if queues else None,
                "grace_period": grace_period,
            }.items()
            if v is not None
        }
        if settings is None:
            settings = WorkerSettings(**overrides)
        elif overrides:
            settings = WorkerSettings(**{**settings.model_dump(), **overrides})
        unknown = set(settings.queues) - set(app.queues)
        if unknown:
            raise ValueError(f"app {app.name!r} has no queue {sorted(unknown)[0]!r}; it has {', '.join(app.queues)}")
        self.app = app
        self.broker = broker
        self.settings = settings
        self.concurrency = settings.concurrency
        self.prefetch = settings.prefetch or 2 * settings.concurrency
        self.queues = settings.queues or app.queues
        self.grace_period = settings.grace_period
        self.store = store
        self._owns_store = store is None
        self._own_middleware = list(middleware if middleware is not None else app.middleware)
        self._calls: dict[Handler, Call] = {}
        self._consumers: list[Consumer] = []
        self._fetchers: list[asyncio.Task[None]] = []
        self._runners: list[asyncio.Task[None]] = []
        self._inbox: asyncio.Queue[tuple[Delivery, bool]] = asyncio.Queue()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: ordering key -> deliveries of that key waiting for the one running
        self._waiting: dict[tuple[str, str], deque[Delivery]] = {}
        self._stopping = False
        self._forced = asyncio.Event()
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Declare the app's topology, open the idempotency store, start consuming."""
        topology = self.app.topology
        transactional = [h.name for h in self.app.handlers.values() if h.transactional and h.queue in self.queues]
        await self.broker.declare(topology)
        if self.store is None:
            self.store = await open_store(self.settings.store_url(self.broker.url))
        if transactional and not isinstance(self.store, TransactionalStore):
            await self._close_store()
            raise ValueError(
                f"handler {transactional[0]} is transactional; its idempotency store must be SQLite or PostgreSQL"
            )
        policies = {q.name: q.retry for q in topology.queues}
        middleware = default_chain(self.settings, self.store, policies, self.app.breakers, self._own_middleware)
        self._calls = {h: chain(middleware, h, h) for h in self.app.handlers.values()}
        for name in self.queues:
            consumer = self.broker.consume(name, prefetch=self.prefetch)
            self._consumers.append(consumer)
            ordered = topology.queue(name).ordered
            self._fetchers.append(asyncio.create_task(self._fetch(consumer, ordered), name=f"fetch:{name}"))
        self._runners = [asyncio.create_task(self._run(), name=f"runner:{i}") for i in range(self.concurrency)]

    async def run(self) -> None:
        """Start, then run until `stop()` is called."""
        await self.start()
        await self._stopped.wait()

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period (or
        until `force()`), cancel the rest, return what was not settled to the broker,
        and close the store the worker opened."""
        grace = self.grace_period if grace_period is None else grace_period
        self._stopping = True
        for consumer in self._consumers:
            consumer.stop()
        for fetcher in self._fetchers:
            fetcher.cancel()  # cancelling a fetch loses nothing (the consumer contract)
        await asyncio.gather(*self._fetchers, return_exceptions=True)
        if self._busy:
            await self._wait_idle(grace)
        if self._busy:
            log.warning("handlers cancelled, their messages go back", extra={"action": f"cancelled {self._busy}"})
        for runner in self._runners:
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        for consumer in self._consumers:
            await consumer.close()  # what was taken and not settled goes back
        self._consumers.clear()
        self._fetchers.clear()
        self._runners.clear()
        await self._close_store()
        self._stopped.set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` began: no new handler starts."""
        return self._stopping

    def force(self) -> None:
        """Cut the grace period short: a stop in progress cancels in-flight handlers now."""
        self._forced.set()

    async def __aenter__(self) -> "Worker":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _wait_idle(self, grace: float) -> None:
        idle = asyncio.ensure_future(self._idle.wait())
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            await asyncio.wait({idle, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            forced.cancel()

    async def _close_store(self) -> None:
        if self._owns_store and self.store is not None:
            await self.store.close()
            self.store = None

    # -- consuming ----------------------------------------------------------------

    async def _fetch(self, consumer: Consumer, ordered: bool) -> None:
        """Hand what the consumer gives (at most `prefetch` unsettled) to the runners."""
        async for delivery in consumer:
            self._inbox.put_nowait((delivery, ordered))

    async def _run(self) -> None:
        """One of `concurrency` runners: takes deliveries and processes them one by one.
        A delivery whose ordering key is already running waits behind it, and the runner
        that has the key takes it next, so a key never blocks a runner."""
        while True:
            delivery, ordered = await self._inbox.get()
            key = (delivery.queue, delivery.message.ordering_key) if ordered and delivery.message.ordering_key else None
            if key is not None:
                if key in self._waiting:
                    self._waiting[key].append(delivery)
                    continue
                self._waiting[key] = deque()
            self._busy += 1
            self._idle.clear()
            try:
                next_one: Delivery | None = delivery
                while next_one is not None and not self._stopping:
                    await self.process(next_one)
                    waiting = self._waiting.get(key) if key is not None else None
                    next_one = waiting.popleft() if waiting else None
            finally:
                if key is not None:
                    del self._waiting[key]
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    # -- one delivery ---------------------------------------------------------------

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
            try:
                await self._calls[handler](Context(delivery, self.broker, handler, payload))
            except Reject as exc:
                await self._dead_letter(delivery, str(exc) or "rejected by handler", exc.__cause__ or exc)
            except Postpone as exc:
                log.debug("postponed: %s", exc, extra=_where(delivery, action="postpone", delay=round(exc.delay, 3)))
                await self.broker.send(delivery.queue, [postponed_copy(delivery)], delay=max(0.0, exc.delay))
                await delivery.ack()
            except RetryLater as exc:
                log.warning("handler failed", extra=_where(delivery, action="retry", delay=round(exc.delay, 3), error=str(exc)))
                await delivery.retry(max(0.0, exc.delay))
            except Exception as exc:  # a middleware outside the retry middleware failed
                await self._dead_letter(delivery, f"unexpected error: {type(exc).__name__}: {exc}", exc)
            else:
                await delivery.ack()
        except Exception as exc:
            # the broker could not take the settlement; the message comes back to us or another worker
            log.error("settling failed", extra=_where(delivery, error=repr(exc)))

    async def _dead_letter(self, delivery: Delivery, reason: str, exc: BaseException | None = None) -> None:
        log.warning("handler failed", extra=_where(delivery, action="dead-letter", error=reason))
        await delivery.dead_letter(reason, exc)


def _where(delivery: Delivery, **more: Any) -> Mapping[str, Any]:
    """The fields of a failure line: which message, where, which attempt."""
    return {"message_id": delivery.message.id, "queue": delivery.queue, "attempt": attempt_of(delivery), **more}
