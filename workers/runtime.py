"""The worker: consumes an app's queues, runs each delivery through the middleware
chain and settles it by the outcome.

Outcome -> settlement: a result -> ack; `Reject` (raised by the handler, or by the
retry middleware for a non-retryable error or the last attempt) or an undecodable /
invalid payload -> dead-letter at once with the reason; `RetryLater` -> back after its
delay, one attempt used; `Postpone` -> back after its delay without using one
(`Delivery.postpone`). Each delivery comes to one `Outcome`, applied in one place
(`Worker._settle`): a settlement the broker does not take returns the message to the
queue at once. Nothing a handler does stops the worker.

Concurrency: at most `concurrency` handlers run at once; each queue's consumer holds at
most `prefetch` unsettled deliveries, so memory stays flat whatever the backlog. On an
ordered queue, deliveries with the same ordering key run one at a time, in order,
while different keys run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from mailbag.broker import Broker, Delivery, DeliveryReleased, tracing
from mailbag.broker.base import Consumer
from mailbag.broker.clock import Clock
from mailbag.broker.codec import PayloadError, decode
from mailbag.broker.errors import MailbagError
from mailbag.workers.app import App, Handler
from mailbag.workers.context import Context
from mailbag.workers.errors import ConsumerFailed, Postpone, Reject, RetryLater
from mailbag.workers.metrics import Metrics, Settlement
from mailbag.workers.middleware import Call, Middleware, chain
from mailbag.workers.middleware.defaults import default_chain
from mailbag.workers.outcome import Outcome
from mailbag.workers.settings import WorkerSettings
from mailbag.workers.stores import IdempotencyStore, TransactionalStore, open_store

log = logging.getLogger("mailbag.worker")

#: the longest a stop waits for the consumers to close, and then for the store: a broker
#: or database that does not answer must not keep a stopping worker alive
CLOSE_TIMEOUT = 2.0


class Worker:
    """Runs `app` against `broker`. Settings come from `settings` (default: the
    `MAILBAG_*` environment), and the keyword arguments override them. `middleware`
    replaces the app's own middleware (it still runs inside the built-in chain).
    `store` is the idempotency store (default: opened from the settings, and closed
    with the worker). With `metrics`, the worker records what it does there and
    polls its queues' depths (see `mailbag.workers.metrics`); without, it records nothing.
    `clock` times circuit resets and handler timeouts: the real one unless given (a
    `ManualClock` shared with the memory broker runs the worker in virtual time)."""

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
        metrics: Metrics | None = None,
        clock: Clock | None = None,
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
        self.metrics = metrics
        #: called with each settlement the broker took and its delivery (`mailbag worker`
        #: counts them, and logs each with -v); keep it cheap, it runs per message
        self.on_settled: Callable[[Settlement, Delivery], None] | None = None
        self.clock = clock
        self._poller: asyncio.Task[None] | None = None
        self._own_middleware = list(middleware if middleware is not None else app.middleware)
        #: (topic, queue) -> the handler and its chain
        self._calls: dict[tuple[str, str], tuple[Handler, Call]] = {}
        self._consumers: list[Consumer] = []
        self._fetchers: list[asyncio.Task[None]] = []
        self._runners: list[asyncio.Task[None]] = []
        self._inbox = _Inbox()
        self._busy = 0
        #: set by a stop waiting for in-flight handlers; the last one to finish resolves it
        self._all_done: asyncio.Future[None] | None = None
        #: ordering key -> deliveries of that key waiting for the one running
        self._waiting: dict[tuple[str, str], deque[Delivery]] = {}
        self._stopping = False
        self._forced = asyncio.Event()
        self._stopped = asyncio.Event()
        #: set when a queue's consumer ended on its own (the broker gave up on it): the
        #: worker no longer does all its work, and whoever runs it should stop and exit
        self.failed = asyncio.Event()

    async def start(self) -> None:
        """Declare the app's topology, prepare, start consuming."""
        topology = self.app.topology
        await self.broker.declare(topology)
        await self.prepare()
        for name in self.queues:
            consumer = self.broker.consume(name, prefetch=self.prefetch)
            self._consumers.append(consumer)
            ordered = topology.queue(name).ordered
            self._fetchers.append(asyncio.create_task(self._fetch(name, consumer, ordered), name=f"fetch:{name}"))
        self._runners = [asyncio.create_task(self._run(), name=f"runner:{i}") for i in range(self.concurrency)]
        if self.metrics is not None:
            poll = self.metrics.poll(self.broker, self.queues, self.settings.metrics_interval)
            self._poller = asyncio.create_task(poll, name="metrics-poll")

    async def prepare(self) -> None:
        """Open the idempotency store and build each handler's middleware chain: all
        that `process` needs. A host that brings its own deliveries (the Lambda entry
        point) calls this instead of `start`."""
        topology = self.app.topology
        transactional = [h.name for h in self.app.handlers.values() if h.transactional and h.queue in self.queues]
        if self.store is None:
            self.store = await open_store(self.settings.store_url(self.broker.url))
        if transactional and not isinstance(self.store, TransactionalStore):
            await self._close_store()
            raise ValueError(
                f"handler {transactional[0]} is transactional; its idempotency store must be SQLite or PostgreSQL"
            )
        policies = {q.name: q.retry for q in topology.queues}
        middleware = default_chain(
            self.settings, self.store, policies, self.app.breakers, self._own_middleware, self.metrics, self.clock
        )
        self._calls = {(h.topic, h.queue): (h, chain(middleware, h, h)) for h in self.app.handlers.values()}

    async def run(self) -> None:
        """Start, then run until `stop()` is called or a consumer fails; then stop and
        raise `ConsumerFailed`."""
        await self.start()
        await wait_first(self._stopped, self.failed)
        if self.failed.is_set():
            await self.stop()
            raise ConsumerFailed("a queue's consumer ended on its own; see the log")

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period (or
        until `force()`), cancel the rest, return what was not settled to the broker,
        and close the store the worker opened."""
        grace = self.grace_period if grace_period is None else grace_period
        self._stopping = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
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
        # what was taken and not settled goes back
        await _within(asyncio.gather(*(c.close() for c in self._consumers)), "closing the consumers")
        self._consumers.clear()
        self._fetchers.clear()
        self._runners.clear()
        await _within(self._close_store(), "closing the idempotency store")
        self._stopped.set()

    @property
    def forced(self) -> bool:
        """True once `force()` was called."""
        return self._forced.is_set()

    @property
    def stopping(self) -> bool:
        """True once `stop()` began: no new handler starts."""
        return self._stopping

    @property
    def ready(self) -> bool:
        """True while every queue's consumer runs and no stop began, and (with
        metrics) the broker answered the last poll: what /readyz reports."""
        consuming = bool(self._fetchers) and not self._stopping and not any(f.done() for f in self._fetchers)
        return consuming and (self.metrics is None or self.metrics.broker_up)

    def force(self) -> None:
        """Cut the grace period short: a stop in progress cancels in-flight handlers now."""
        self._forced.set()

    async def wait_forced(self) -> None:
        """Return once `force()` was called."""
        await self._forced.wait()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _wait_idle(self, grace: float) -> None:
        if self._all_done is None or self._all_done.done():
            self._all_done = asyncio.get_running_loop().create_future()
        forced = asyncio.ensure_future(self._forced.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {self._all_done, forced}
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forced.cancel()

    async def _close_store(self) -> None:
        if self._owns_store and self.store is not None:
            await self.store.close()
            self.store = None

    # -- consuming ----------------------------------------------------------------

    async def _fetch(self, queue: str, consumer: Consumer, ordered: bool) -> None:
        """Hand what the consumer gives (at most `prefetch` unsettled) to the runners. A
        consumer that fails is logged, and the worker is no longer `ready`."""
        try:
            async for delivery in consumer:
                self._inbox.put((delivery, ordered))
        except Exception as exc:
            self._lost(queue, repr(exc))
        else:
            self._lost(queue, "the consumer ended")

    def _lost(self, queue: str, why: str) -> None:
        if not self._stopping:
            log.error("stopped consuming", extra={"queue": queue, "error": why})
            self.failed.set()

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
                if not self._busy and self._all_done is not None and not self._all_done.done():
                    self._all_done.set_result(None)

    # -- one delivery ---------------------------------------------------------------

    async def process(self, delivery: Delivery) -> None:
        """Handle one delivery and settle it. Never raises except on cancellation."""
        handler, call = self._calls.get((delivery.message.topic, delivery.queue), (None, None))
        outcome = await self._outcome(delivery, handler, call)
        await self._settle(delivery, handler, outcome)

    async def _outcome(self, delivery: Delivery, handler: Handler | None, call: Call | None) -> Outcome:
        """What to do with the delivery: run its handler through the chain, unless it has
        none or its payload does not decode (refused, traced here as no chain saw it)."""
        message = delivery.message
        try:
            if handler is None or call is None:
                raise _Refused(f"no handler for topic {message.topic!r} on queue {delivery.queue!r}")
            try:
                payload = decode(message.body, message.content_type, handler.model)
            except PayloadError as exc:
                raise _Refused(str(exc)) from exc
        except _Refused as refused:
            error = refused.__cause__
            tracing.refused(self.broker, delivery, delivery.attempt, str(refused), error)
            return Outcome("dead_letter", reason=str(refused), error=error)
        try:
            await call(Context(delivery, self.broker, handler, payload))
        except Reject as exc:
            return Outcome("dead_letter", reason=str(exc) or "rejected by handler", error=exc.__cause__ or exc)
        except Postpone as exc:
            return Outcome("postpone", delay=max(0.0, exc.delay), reason=str(exc))
        except RetryLater as exc:
            return Outcome("retry", delay=max(0.0, exc.delay), reason=str(exc))
        except Exception as exc:  # a middleware outside the retry middleware failed
            return Outcome("dead_letter", reason=f"unexpected error: {type(exc).__name__}: {exc}", error=exc)
        return Outcome("ack")

    async def _settle(self, delivery: Delivery, handler: Handler | None, outcome: Outcome) -> None:
        """Apply the outcome: the one place a delivery is settled. A settlement the
        broker does not take gives the message back to the queue (`Delivery.release`),
        so it is never stranded nor holds a prefetch slot, and the cause is logged."""
        if outcome.kind == "retry":
            log.warning(
                "handler failed",
                extra=_where(delivery, action="retry", delay=round(outcome.delay, 3), error=outcome.reason),
            )
        elif outcome.kind == "dead_letter":
            log.warning("handler failed", extra=_where(delivery, action="dead-letter", error=outcome.reason))
        elif outcome.kind == "postpone":
            log.debug(
                "postponed: %s",
                outcome.reason,
                extra=_where(delivery, action="postpone", delay=round(outcome.delay, 3)),
            )
        try:
            if outcome.kind == "ack":
                await delivery.ack()
            elif outcome.kind == "retry":
                await delivery.retry(outcome.delay)
            elif outcome.kind == "postpone":
                await delivery.postpone(outcome.delay)
            else:
                await delivery.dead_letter(outcome.reason, outcome.error)
        except DeliveryReleased as exc:
            log.warning("settling came too late", extra=_where(delivery, action=outcome.kind, error=str(exc)))
            return
        except Exception as exc:
            log.error(
                "settling failed, the message goes back to the queue",
                extra=_where(delivery, action=outcome.kind, error=f"{type(exc).__name__}: {exc}"),
            )
            await self._release(delivery)
            return
        if self.metrics is not None:
            name = handler.name if handler is not None else ""
            self.metrics.settle(_SETTLEMENTS[outcome.kind], delivery.queue, name)
        if self.on_settled is not None:
            self.on_settled(_SETTLEMENTS[outcome.kind], delivery)

    @staticmethod
    async def _release(delivery: Delivery) -> None:
        try:
            await delivery.release()
        except Exception as exc:  # it comes back after the broker's own timeout, or with its channel
            log.error("giving the message back failed", extra=_where(delivery, error=f"{type(exc).__name__}: {exc}"))


class _Refused(MailbagError):
    """A delivery no handler may run: no handler for its topic, or a payload that does not
    decode. Never leaves the runtime: it becomes a dead-letter outcome."""


_SETTLEMENTS: dict[str, Settlement] = {
    "ack": "handled",
    "retry": "retried",
    "postpone": "postponed",
    "dead_letter": "dead_lettered",
}


class _Inbox:
    """Deliveries fetched and not yet taken by a runner.

    One idle runner is woken at a time: a new delivery wakes one unless one is already
    on its way, and a runner that takes a delivery and leaves more behind wakes the next.
    Runners whose handlers finish without waiting on anything take turn after turn while
    the rest sleep; runners whose handlers wait fan out one per delivery. (Waking one
    runner per delivery, as `asyncio.Queue` does, mostly wakes runners that find nothing
    left: half the worker's task switches on the memory broker.)"""

    def __init__(self) -> None:
        self._items: deque[tuple[Delivery, bool]] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        #: a runner was woken and has not looked at the items yet
        self._waking = False

    def put(self, item: tuple[Delivery, bool]) -> None:
        self._items.append(item)
        if not self._waking:
            self._wake_one()

    async def get(self) -> tuple[Delivery, bool]:
        while not self._items:
            woken = asyncio.get_running_loop().create_future()
            self._idle.append(woken)
            try:
                await woken
            except asyncio.CancelledError:
                if woken.done() and not woken.cancelled():  # woken, then cancelled: pass the turn on
                    self._waking = False
                    if self._items:
                        self._wake_one()
                raise
            self._waking = False
        item = self._items.popleft()
        if self._items and not self._waking:
            self._wake_one()
        return item

    def _wake_one(self) -> None:
        while self._idle:
            runner = self._idle.popleft()
            if not runner.done():
                runner.set_result(None)
                self._waking = True
                return


async def _within(step: Awaitable[Any], what: str) -> None:
    """Run one step of a stop for at most `CLOSE_TIMEOUT` seconds; past that, log and
    go on (a connection that is left returns its messages when the process ends)."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await step
    except Exception as exc:
        log.warning("%s failed or took over %gs: %r; going on", what, CLOSE_TIMEOUT, exc)


async def wait_first(*events: asyncio.Event) -> None:
    """Wait until one of `events` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _where(delivery: Delivery, **more: Any) -> Mapping[str, Any]:
    """The fields of a failure line: which message, of which flow, where, which attempt."""
    message = delivery.message
    return {
        "message_id": message.id,
        "correlation_id": message.correlation_id or message.id,
        "queue": delivery.queue,
        "attempt": delivery.attempt,
        **more,
    }
