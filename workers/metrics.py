"""Prometheus metrics of a worker, in a registry of its own (never the global one, so
two workers in one process, or two tests, do not mix their numbers).

What is counted and where: the runtime counts settlements (handled, retried,
dead-lettered, postponed) once the broker took them; `mailbag.workers.middleware.metrics`
times handlers, counts their failures and how many run; `poll` reads queue depths,
publishes no queue took, delayed messages whose queue is gone (`Broker.orphans`), and
outbox backlogs every few seconds; the worker sets `mailbag_broker_up` as the broker's
connection goes and comes back (`Broker.link`) and counts runners it replaced. Labels
are queue, handler, state, topic and outbox table: bounded by the app, never a message
id. A worker built without `Metrics` records nothing and pays nothing, but still asks
for orphans once a minute (`watch_orphans`), so the broker's warning about them reaches
the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mailbag.broker import Broker
from mailbag.broker.unroutable import WARN_EVERY

log = logging.getLogger("mailbag.metrics")

Settlement = Literal["handled", "retried", "dead_lettered", "postponed"]

#: the `QueueStats` counts exported as `mailbag_queue_messages{state=...}`
QUEUE_STATES = ("ready", "in_flight", "delayed", "dead_letters")


#: the shortest time a queue-depth poll is given before the broker counts as down
POLL_TIMEOUT = 5.0


async def watch_orphans(broker: Broker, interval: float = WARN_EVERY) -> None:
    """Until cancelled: ask `broker` for its orphans every `interval` seconds (it warns
    while there are some). Ends at once on a broker that keeps none."""
    while True:
        try:
            async with asyncio.timeout(POLL_TIMEOUT):
                if await broker.orphans() is None:
                    return
        except Exception as exc:
            log.debug("could not count the delayed messages whose queue is gone: %r", exc)
        await asyncio.sleep(interval)


class OutboxWithStats(Protocol):
    """What `watch_outbox` needs of an outbox (`mailbag.publishers.outbox.Outbox` has it)."""

    table: str

    async def stats(self) -> Any: ...


class HandlerMetrics(NamedTuple):
    """One handler's series on one queue, looked up once: labelling a metric costs more
    than recording in it."""

    in_flight: Gauge
    duration: Histogram
    failed: Counter
    settled: dict[Settlement, Counter]


class Metrics:
    """The metric objects, and `registry` to serve them from."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry = registry or CollectorRegistry()
        labels = ("queue", "handler")

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"mailbag_messages_{name}", doc, labels, registry=registry)

        def gauge(name: str, doc: str, *label_names: str) -> Gauge:
            return Gauge(f"mailbag_{name}", doc, label_names, registry=registry)

        self.settled: dict[Settlement, Counter] = {
            "handled": counter("handled", "Messages whose handler succeeded, acked"),
            "retried": counter("retried", "Messages put back for another attempt after a failure"),
            "dead_lettered": counter("dead_lettered", "Messages moved to the dead-letter queue"),
            "postponed": counter("postponed", "Messages put back without using an attempt (open circuit, duplicate)"),
        }
        self.failed = counter("failed", "Handler runs that failed (raised, timed out or rejected)")
        self.duration = Histogram(
            "mailbag_handler_duration_seconds",
            "Time a message spent in its handler and middleware",
            labels,
            registry=registry,
        )
        self.in_flight = gauge("messages_in_flight", "Handlers running now", "queue")
        self.queue_messages = gauge("queue_messages", "Messages in a queue by state, polled", "queue", "state")
        self.broker_up = gauge("broker_up", "1 while the broker's connection is up, else 0")
        self.runner_restarts = Counter(
            "mailbag_runner_restarts", "Runners that ended without a stop and were replaced", registry=registry
        )
        self.unrouted = gauge(
            "unroutable_published", "Messages published that no queue took, since the broker opened, polled", "topic"
        )
        self.delay_orphans = gauge(
            "delay_orphans", "Delayed messages kept aside because their queue was deleted while they waited, polled"
        )
        self.outbox_pending = gauge("outbox_pending", "Outbox rows not yet published", "outbox")
        self.outbox_failing = gauge("outbox_failing", "Pending outbox rows whose publish failed before", "outbox")
        self.outbox_oldest = gauge("outbox_oldest_pending_seconds", "Age of the oldest pending row (0: none)", "outbox")
        self.broker_up.set(1)
        self._poll_failing = False
        self._outboxes: list[OutboxWithStats] = []
        self._handlers: dict[tuple[str, str], HandlerMetrics] = {}

    def of(self, queue: str, handler: str) -> HandlerMetrics:
        """The series of `handler` (its name; "" for none) on `queue`."""
        found = self._handlers.get((queue, handler))
        if found is None:
            found = self._handlers[queue, handler] = HandlerMetrics(
                self.in_flight.labels(queue),
                self.duration.labels(queue, handler),
                self.failed.labels(queue, handler),
                {outcome: counter.labels(queue, handler) for outcome, counter in self.settled.items()},
            )
        return found

    def settle(self, outcome: Settlement, queue: str, handler: str) -> None:
        self.of(queue, handler).settled[outcome].inc()

    def watch_outbox(self, outbox: OutboxWithStats) -> None:
        """Export this outbox's backlog at every `poll` (for a process that runs a relay)."""
        self._outboxes.append(outbox)

    async def poll(self, broker: Broker, queues: Sequence[str], interval: float) -> None:
        """Until cancelled: `poll_once` every `interval` seconds. A poll may take up to
        `POLL_TIMEOUT` seconds however short the interval: one cut short mid-request
        can leave a RabbitMQ channel half open, which closes the whole connection."""
        while True:
            await self.poll_once(broker, queues, timeout=max(interval, POLL_TIMEOUT))
            await asyncio.sleep(interval)

    async def poll_once(self, broker: Broker, queues: Sequence[str], timeout: float = 10.0) -> None:
        """Read the queues' depths and the watched outboxes' backlogs, each read bounded
        by `timeout` seconds. A broker or outbox that fails or does not answer keeps its
        last figures (logged once per run of failures)."""
        try:
            async with asyncio.timeout(timeout):
                for queue in queues:
                    stats = await broker.stats(queue)
                    for state in QUEUE_STATES:
                        count = getattr(stats, state)
                        if count is not None:
                            self.queue_messages.labels(queue, state).set(count)
                orphans = await broker.orphans()
                if orphans is not None:
                    self.delay_orphans.set(orphans)
        except Exception as exc:
            if not self._poll_failing:
                log.warning("the broker did not answer a stats poll: %r", exc)
            self._poll_failing = True
        else:
            self._poll_failing = False
        for topic, count in broker.unrouted.counts.items():
            self.unrouted.labels(topic).set(count)
        for outbox in self._outboxes:
            try:
                async with asyncio.timeout(timeout):
                    stats = await outbox.stats()
            except Exception as exc:
                log.warning("reading outbox %s failed: %s", outbox.table, exc)
                continue
            self.outbox_pending.labels(outbox.table).set(stats.pending)
            self.outbox_failing.labels(outbox.table).set(stats.failing)
            self.outbox_oldest.labels(outbox.table).set(stats.oldest_pending_age or 0)
