"""The worker: consumes an app's queues, runs each delivery through the middleware
chain and settles it by the outcome.

Outcome -> settlement: a result -> ack; `Reject` (raised by the handler, or by the
retry middleware for a non-retryable error or the last attempt) or an undecodable /
invalid payload -> dead-letter at once with the reason; `RetryLater` -> back after its
delay, one attempt used; `Postpone` -> back after its delay without using one
(`Delivery.postpone`). Each delivery comes to one `Outcome`, applied in one place
(`Worker._settle`): a settlement the broker does not take returns the message to the
queue at once. Nothing a handler does stops the worker.

Runners are supervised: one that ends for any reason but a stop (a bug, an exception
that is no `Exception`) is logged with its traceback, counted
(`mailbag_runner_restarts_total`) and replaced after a pause that doubles while they
keep dying (`RESTART_BACKOFF` up to `MAX_RESTART_BACKOFF`); the delivery it held is
retried (one attempt used, so one that keeps killing runners ends in the dead-letter
queue), and those of its ordering key waiting behind it go back to the inbox.

Readiness (`Worker.unready`, what /readyz serves) is kept by events, never polled: the
broker's `Link` (its adapter reports the connection closing and coming back), fetchers
that end, runners that die and are replaced, and the idempotency store's calls (not
ready once `STORE_FAILURES` calls in a row failed, ready again at the first that
succeeds). Liveness (`Worker.alive`, /healthz) fails only when restarting the process
is the cure: its event loop has not turned for `LOOP_STALL` seconds.

Concurrency: at most `concurrency` handlers run at once; each queue's consumer holds at
most `prefetch` unsettled deliveries, so memory stays flat whatever the backlog. On an
ordered queue, deliveries with the same ordering key run one at a time, in order,
while different keys run in parallel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from mailbag.broker import Broker, Delivery, DeliveryReleased, tracing
from mailbag.broker.backoff import RETURNS
from mailbag.broker.base import Consumer
from mailbag.broker.clock import Clock
from mailbag.broker.codec import PayloadError, decode
from mailbag.broker.errors import MailbagError
from mailbag.broker.headers import cut
from mailbag.broker.outgoing import TopicModels
from mailbag.workers.app import App, Handler
from mailbag.workers.context import Context
from mailbag.workers.errors import ConsumerFailed, Postpone, Reject, RetryLater
from mailbag.workers.metrics import Metrics, Settlement, watch_orphans
from mailbag.workers.middleware import Call, Middleware, chain
from mailbag.workers.middleware.defaults import default_chain
from mailbag.workers.middleware.idempotency import Idempotency
from mailbag.workers.outcome import Outcome
from mailbag.workers.settings import WorkerSettings
from mailbag.workers.stores import IdempotencyStore, TransactionalStore, open_store

log = logging.getLogger("mailbag.worker")

#: the longest a stop waits for the consumers to close, and then for the store: a broker
#: or database that does not answer must not keep a stopping worker alive
CLOSE_TIMEOUT = 2.0
#: bytes of a handler's error a log line keeps (the dead letter keeps more)
LOGGED_ERROR_MAX = 2048
#: first pause before a dead runner is replaced, in seconds; doubles per death in a row
RESTART_BACKOFF = 0.5
MAX_RESTART_BACKOFF = 10.0
#: a runner that lived this long before dying is replaced after the first pause again
RUNNER_STABLE = 60.0
#: idempotency store calls failed in a row that make the worker not ready: a lone
#: failure is a blip the retry rides out; this many means the store is down
STORE_FAILURES = 5
#: seconds the event loop may go without turning before the worker is not alive
LOOP_STALL = 30.0
#: how often the event loop stamps that it turns, in seconds
LOOP_BEAT = 1.0


class Worker:
    """Runs `app` against `broker`. Settings come from `settings` (default: the
    `MAILBAG_*` environment), and the keyword arguments override them. `middleware`
    replaces the app's own middleware (it still runs inside the built-in chain).
    `store` is the idempotency store (default: opened from the settings, and closed
    with the worker). With `metrics`, the worker records what it does there and
    polls its queues' depths (see `mailbag.workers.metrics`); without, it records nothing
    and only asks the broker for orphaned delayed messages, which it warns about.
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
        #: the models follow-ups to the app's own topics must validate against
        self.models = TopicModels(app=app)
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
        #: runners dead and not yet replaced, and the pause before the next replacement
        self._dead_runners = 0
        self._restart_backoff = RESTART_BACKOFF
        self.runner_restarts = 0
        #: tasks that give back what a dead runner held
        self._background: set[asyncio.Task[None]] = set()
        self._idempotency: Idempotency | None = None
        #: monotonic time the event loop last turned (see `alive`)
        self._loop_turned = time.monotonic()
        self._beat: asyncio.TimerHandle | None = None
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
        self._runners = [self._runner(i) for i in range(self.concurrency)]
        self.broker.link.watch(self._link_changed)
        self._link_changed(self.broker.link.up)
        self._stamp()
        if self.metrics is not None:
            poll = self.metrics.poll(self.broker, self.queues, self.settings.metrics_interval)
        else:
            poll = watch_orphans(self.broker)
        self._poller = asyncio.create_task(poll, name="poll")

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
        self._idempotency = next((m for m in middleware if isinstance(m, Idempotency)), None)

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
        self.broker.link.unwatch(self._link_changed)
        if self._beat is not None:
            self._beat.cancel()
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
        await _within(asyncio.gather(*self._background, return_exceptions=True), "giving back a dead runner's messages")
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
        """True when `unready()` finds nothing: what /readyz reports."""
        return not self.unready()

    def unready(self) -> str:
        """Why the worker does not do all its work now, or "" when it does: not started
        or stopping, a queue's consumer ended, the broker's connection is down, fewer
        runners alive than `concurrency`, or the idempotency store failed its last
        `STORE_FAILURES` calls. Safe to call from another thread (the probe server)."""
        if not self._fetchers or self._stopping:
            return "stopping" if self._stopping else "not started"
        ended = [f.get_name().removeprefix("fetch:") for f in self._fetchers if f.done()]
        if ended:
            return f"not consuming {', '.join(ended)}"
        if not self.broker.link.up:
            return f"broker connection down: {self.broker.link.reason}"
        if self._dead_runners:
            return f"{self.concurrency - self._dead_runners} of {self.concurrency} runners alive"
        failing = self._idempotency.failing if self._idempotency is not None else 0
        if failing >= STORE_FAILURES:
            return f"the idempotency store failed its last {failing} calls"
        return ""

    @property
    def alive(self) -> bool:
        """False once the event loop has not turned for `LOOP_STALL` seconds (a handler
        blocks it): only a restart cures that. What /healthz reports; safe to call from
        another thread."""
        return self._beat is None or time.monotonic() - self._loop_turned < LOOP_STALL

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

    def _stamp(self) -> None:
        self._loop_turned = time.monotonic()
        self._beat = asyncio.get_running_loop().call_later(LOOP_BEAT, self._stamp)

    def _link_changed(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.broker_up.set(1 if up else 0)

    # -- runners --------------------------------------------------------------------

    def _runner(self, index: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._supervised(index), name=f"runner:{index}")

    async def _supervised(self, index: int) -> None:
        """Runner `index`; unless the worker is stopping (or the process exiting), one
        that ends is logged with its traceback and replaced after the backoff."""
        born = time.monotonic()
        try:
            await self._run()
        except BaseException as exc:
            if self._stopping or isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._replace(index, born, exc)

    def _replace(self, index: int, born: float, exc: BaseException) -> None:
        if time.monotonic() - born >= RUNNER_STABLE:
            self._restart_backoff = RESTART_BACKOFF
        pause = self._restart_backoff
        self._restart_backoff = min(MAX_RESTART_BACKOFF, pause * 2)
        self._dead_runners += 1
        log.error(
            "runner %d ended on %s; starting another in %.1fs",
            index,
            type(exc).__name__,
            pause,
            exc_info=exc,
            extra={"action": "runner restart"},
        )
        asyncio.get_running_loop().call_later(pause, self._restart, index)

    def _restart(self, index: int) -> None:
        self._dead_runners -= 1
        if self._stopping:
            return
        self.runner_restarts += 1
        if self.metrics is not None:
            self.metrics.runner_restarts.inc()
        self._runners[index] = self._runner(index)

    def _return_held(self, delivery: Delivery, waiting: deque[Delivery], exc: BaseException) -> None:
        """What a dying runner held: its delivery is retried (an attempt used), and
        those of its ordering key waiting behind it go back to the inbox."""
        for other in waiting:
            self._inbox.put((other, True))
        if delivery.settled is not None:
            return
        handler, _ = self._calls.get((delivery.message.topic, delivery.queue), (None, None))
        delay = self.app.topology.queue(delivery.queue).retry.delay(delivery.attempt)
        outcome = Outcome("retry", delay=delay, reason=f"its runner died: {type(exc).__name__}: {exc}")
        task = asyncio.get_running_loop().create_task(self._settle(delivery, handler, outcome))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                    delivery = next_one
                    await self.process(delivery)
                    waiting = self._waiting.get(key) if key is not None else None
                    next_one = waiting.popleft() if waiting else None
            except BaseException as exc:
                if not self._stopping:
                    self._return_held(delivery, self._waiting.get(key, deque()) if key else deque(), exc)
                raise
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
            await call(Context(delivery, self.broker, handler, payload, self.models))
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
        so it is never stranded nor holds a prefetch slot, and the cause is logged: at
        once, or, for a message that could not be dead-lettered (its dead-letter queue
        gone), after a pause that doubles with each failure in a row, one line each
        (`mailbag.broker.backoff`)."""
        if outcome.kind == "retry":
            log.warning(
                "handler failed",
                extra=_where(delivery, action="retry", delay=round(outcome.delay, 3), error=_logged(outcome.reason)),
            )
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
            await self._give_back(delivery, outcome, f"{type(exc).__name__}: {exc}")
            return
        RETURNS.settled(delivery.queue, delivery.message.id)
        if outcome.kind == "dead_letter":
            log.warning("handler failed", extra=_where(delivery, action="dead-letter", error=_logged(outcome.reason)))
        if self.metrics is not None:
            name = handler.name if handler is not None else ""
            self.metrics.settle(_SETTLEMENTS[outcome.kind], delivery.queue, name)
        if self.on_settled is not None:
            self.on_settled(_SETTLEMENTS[outcome.kind], delivery)

    @staticmethod
    async def _give_back(delivery: Delivery, outcome: Outcome, why: str) -> None:
        """Return a delivery whose settlement failed, logging one line."""
        pause = 0.0
        if outcome.kind == "dead_letter":
            pause = RETURNS.failed(delivery.queue, delivery.message.id)
            log.error(
                "handler failed and dead-lettering failed (%s), the message goes back for %gs",
                why,
                pause,
                extra=_where(delivery, action="dead-letter", delay=pause, error=_logged(outcome.reason)),
            )
        else:
            log.error(
                "settling failed, the message goes back to the queue",
                extra=_where(delivery, action=outcome.kind, error=why),
            )
        try:
            await delivery.release(pause)
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


def _logged(error: str) -> str:
    return cut(error, LOGGED_ERROR_MAX)


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
