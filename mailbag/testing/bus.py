"""`TestBus`: an app's worker in the test's own event loop, a way to publish to it, and
"run until everything settled", with the outcome of each message.

On `memory://` the broker, the worker (circuit resets, handler timeouts) and any saga
orchestrator run on one `ManualClock`: when nothing can happen without time passing,
`settle()` moves the clock to the next thing waiting for it, so minutes of backoff take
milliseconds. SNS/SQS in moto can run in virtual time as well (`virtual_time=True`,
what the pytest plugin does): retries and postponements are timed on the bus's clock.
On any other broker time is real and `settle()` waits, bounded by its timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailbag.broker import Broker, Message, connect, scheme_of
from mailbag.broker.clock import ManualClock
from mailbag.broker.errors import MailbagError
from mailbag.broker.memory import MemoryBroker
from mailbag.broker.outgoing import outgoing
from mailbag.dlq import DeadLetter, DeadLetters
from mailbag.testing.observed import Observed, Recorder, Status
from mailbag.workers import App, Worker
from mailbag.workers.saga import Orchestrator, Saga
from mailbag.workers.saga.store import SagaStore, open_store
from mailbag.workers.stores.memory import MemoryStore

#: real seconds between looks at the broker while waiting for it
POLL = 0.02
#: real seconds a handler may go on without any visible progress before virtual time
#: moves on (it is then waiting for the clock: a timeout, a circuit, a sleep on it)
IDLE = 0.05


class NotSettled(MailbagError, TimeoutError):
    """`settle()` ran out of time with messages still pending."""


@dataclass(frozen=True)
class Outcome:
    """What became of one message on one queue: `status` is `handled` (acked),
    `dead_lettered` (with `reason`) or `pending`; `attempts` the attempt it ended on
    (or the last retried); `runs` how often its handler was called (0 for a duplicate
    already handled, or an invalid payload); `error` the handler's last error, or what
    the dead letter carries."""

    message_id: str
    queue: str
    status: Status
    attempts: int
    runs: int
    reason: str | None
    error: BaseException | None


class TestBus:
    """Runs `app` on `broker` (a URL, or an open `Broker` the caller closes) for a test:

        async with TestBus(app) as bus:
            message_id = await bus.publish("orders.placed", {"order_id": "o-1"})
            await bus.settle()
            assert bus.outcome(message_id).status == "handled"

    `prefix` is put before every topic and queue name on the broker (a shared RabbitMQ);
    the app and the test never see it. With `delete_declared` (the default with a
    prefix) the bus removes the topologies declared through it when it closes.
    `virtual_time` runs the bus on a `ManualClock`: the default on `memory://`; with
    SNS/SQS, only on moto in process. The keyword arguments go to `Worker`
    (`concurrency`, `settings`, `store`, ...); the idempotency store is in memory
    unless `store` or `settings` says otherwise.
    """

    __test__ = False  # a pytest collector must not take it for a test class

    def __init__(
        self,
        app: App,
        broker: str | Broker = "memory://",
        *,
        prefix: str = "",
        virtual_time: bool | None = None,
        delete_declared: bool | None = None,
        **worker_options: Any,
    ) -> None:
        self.app = app
        self._target = broker
        self._prefix = prefix
        self._delete_declared = bool(prefix) if delete_declared is None else delete_declared
        self._virtual = virtual_time
        self._worker_options = worker_options
        self._owned: Broker | None = None
        self._observed: Observed | None = None
        self._worker: Worker | None = None
        self._orchestrators: list[tuple[Orchestrator, SagaStore | None]] = []
        self.clock: ManualClock | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> TestBus:
        inner = await self._open()
        try:
            observed = self._observed = Observed(inner, prefix=self._prefix, clock=self.clock)
            options = dict(self._worker_options)
            own = options.pop("middleware", None)
            options["middleware"] = [*(self.app.middleware if own is None else own), Recorder(observed)]
            if "store" not in options and "settings" not in options:
                options["store"] = MemoryStore()
            self._worker = Worker(self.app, observed, clock=self.clock, **options)
            await self._worker.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _open(self) -> Broker:
        target = self._target
        if isinstance(target, Broker):
            inner = target
            clock = getattr(target, "clock", None)
            if isinstance(clock, ManualClock):
                self.clock = clock
        elif scheme_of(target) == "memory":
            self.clock = ManualClock(time.time()) if self._virtual is not False else None
            inner = self._owned = MemoryBroker(target, clock=self.clock)
        else:
            inner = self._owned = await connect(target)
        if self._virtual and self.clock is None:
            self.clock = ManualClock(time.time())
        return inner

    async def _close(self) -> None:
        for orchestrator, store in reversed(self._orchestrators):
            await orchestrator.__aexit__(None, None, None)
            if store is not None:
                await store.close()
        self._orchestrators.clear()
        if self._worker is not None:
            await self._worker.stop()
            self._worker = None
        observed = self._observed
        if observed is not None:
            await observed.close()
        owned, self._owned = self._owned, None
        if owned is not None:
            if observed is not None and self._delete_declared:
                await observed.remove_declared()
            await owned.close()

    @property
    def broker(self) -> Broker:
        """The broker the app's worker uses (names without the prefix)."""
        if self._observed is None:
            raise RuntimeError("the bus is not running: use `async with TestBus(...) as bus`")
        return self._observed

    # -- driving -------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Publish `payload` (a pydantic model, JSON-able value or bytes) as a client of
        the app would; returns the message id. `key` is the ordering key; a given
        `message_id` publishes a duplicate of an earlier message."""
        message = outgoing(
            topic, payload, key=key, headers=headers, correlation_id=correlation_id, message_id=message_id
        )
        await self._running().publish_from_test(topic, [message])
        return message.id

    async def orchestrator(self, saga: Saga, store: SagaStore | None = None, **options: Any) -> Orchestrator:
        """Start an `Orchestrator` for `saga` on this bus (and its clock), stopped with
        the bus; `store` defaults to SQLite in memory. `settle()` then also waits for
        every saga to finish, moving virtual time through step timeouts."""
        own_store = None
        if store is None:
            store = own_store = await open_store("sqlite://")
        orchestrator = Orchestrator(saga, store, self._running(), clock=self.clock, **options)
        await orchestrator.__aenter__()
        self._orchestrators.append((orchestrator, own_store))
        return orchestrator

    async def settle(self, timeout: float = 30.0) -> None:
        """Return once nothing is ready, in flight or delayed on the app's queues, every
        message published is handled or dead-lettered, and no saga is running. Raises
        `NotSettled`, naming what is pending, after `timeout` real seconds."""
        observed = self._running()
        give_up = time.monotonic() + timeout
        seen, progress_at, quiet_before = -1, time.monotonic(), False
        while True:
            for _ in range(10):
                await asyncio.sleep(0)  # let whatever is ready run first
            quiet, ready = await self._look()
            if quiet and quiet_before:
                return
            quiet_before = quiet
            if time.monotonic() > give_up:
                raise NotSettled(f"not settled within {timeout:g}s: {self._pending()}")
            if observed.version != seen:
                seen, progress_at = observed.version, time.monotonic()
                continue
            clock = self.clock
            if clock is not None and not quiet:
                stuck = observed.unsettled == 0 and ready == 0
                due = clock.next_deadline()
                if due is not None and (stuck or time.monotonic() - progress_at >= IDLE):
                    await clock.advance(max(0.0, due - clock.now()))
                    progress_at = time.monotonic()
                    continue
            await asyncio.sleep(POLL)

    # -- what happened -------------------------------------------------------------

    def outcome(self, message_id: str, queue: str | None = None) -> Outcome:
        """The outcome of `message_id` on `queue` (needed only when it went to several)."""
        tracks = self._running().tracks
        queues = sorted(q for (i, q) in tracks if i == message_id)
        if queue is None:
            if not queues:
                raise KeyError(f"no message {message_id} went to any of the app's queues")
            if len(queues) > 1:
                raise ValueError(f"message {message_id} went to {', '.join(queues)}: say which queue")
            queue = queues[0]
        elif queue not in queues:
            raise KeyError(f"message {message_id} did not go to queue {queue!r}")
        t = tracks[message_id, queue]
        return Outcome(message_id, queue, t.status, t.attempts, t.runs, t.reason, t.error)

    def published(self, topic: str) -> list[Message]:
        """What the app's handlers (and sagas) published on `topic`, in order."""
        return [m for m in self._running().published if m.topic == topic]

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """The dead letters of the app's `queue` (read without consuming them)."""
        spec = self._running().specs.get(queue)
        dlq = spec.dead_letter_queue if spec is not None else None
        return await DeadLetters(self._running(), queue, dead_letter_queue=dlq).ls(limit=None)

    # -- internals -------------------------------------------------------------------

    def _running(self) -> Observed:
        if self._observed is None:
            raise RuntimeError("the bus is not running: use `async with TestBus(...) as bus`")
        return self._observed

    async def _look(self) -> tuple[bool, int]:
        """(whether everything settled, how many messages are ready to deliver). The
        broker is asked only when its answer can change what `settle` does: not while
        a handler runs, nor in real time while a message is known to be pending."""
        observed = self._running()
        if observed.unsettled or observed.timers:
            return False, 0
        quiet = all(t.status != "pending" for t in observed.tracks.values())
        if not quiet and self.clock is None:
            return False, 0
        ready = 0
        for queue in sorted(observed.consumed):
            stats = await observed.stats(queue)
            ready += stats.ready
            quiet = quiet and not (stats.ready or stats.in_flight or stats.delayed)
        for orchestrator, _ in self._orchestrators:
            quiet = quiet and not await orchestrator.store.active(orchestrator.saga.name)
        return quiet, ready

    def _pending(self) -> str:
        observed = self._running()
        tracks = observed.tracks.items()
        pending = [f"{i} on {q} (attempt {t.attempts})" for (i, q), t in tracks if t.status == "pending"]
        shown = ", ".join(pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
        return f"{len(pending)} message(s) pending{': ' + shown if pending else ''}; {observed.unsettled} in a handler"
