"""Latency and throughput: one publisher, C competing consumers that ack at once;
p50 / p95 / p99 publish-to-handle latency and messages per second, end to end and
for publishing alone."""

from __future__ import annotations

import asyncio
import time

from mailbag.broker import Broker, Delivery, Topology
from mailbag.harness import stats
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "latency"
TITLE = "publish-to-handle latency and messages/s"


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(settings.messages)
    ledger = Ledger(meter)
    name = run_name(NAME)
    await broker.declare(Topology(queues=(target.queue(name, name),)))

    async def handle(delivery: Delivery, consumer: int) -> None:
        ledger.done(ledger.arrived(delivery, consumer))
        await delivery.ack()

    async def publisher() -> float:
        started = time.monotonic()
        await publish(broker, name, messages(name, settings.messages, settings.keys), [ledger], settings.batch)
        return time.monotonic() - started

    lane = Lane(name, handle, settings.consumers, settings.prefetch)
    started = time.monotonic()
    publishing = asyncio.create_task(publisher())
    try:
        await drain(
            broker,
            [ledger],
            [lane],
            grace=settings.listen(target),
            patience=settings.idle_timeout,
            publisher=publishing,
        )
    finally:
        if not publishing.done():
            publishing.cancel()
            result.fail(f"publishing stalled: nothing happened for {settings.idle_timeout:g}s")
        [publish_seconds] = await asyncio.gather(publishing, return_exceptions=True)
    if not isinstance(publish_seconds, float):
        publish_seconds = 0.0

    result.count(ledger)
    first = ledger.first_handled()
    latencies = [(a.at - ledger.sent[a.id].at) * 1000 for a in first]
    span = (first[-1].at - started) if first else 0.0
    result.series["latency_ms"] = latencies
    latency = stats.summary(latencies)
    result.metrics.update(
        latency_ms=latency,
        throughput=len(first) / span if span else 0.0,
        publish_rate=settings.messages / publish_seconds if publish_seconds else 0.0,
        consumers=settings.consumers,
    )
    if first:
        result.summary = (
            f"p50={latency['p50']:.1f}ms p95={latency['p95']:.1f}ms p99={latency['p99']:.1f}ms; "
            f"{result.metrics['throughput']:.0f} msg/s end to end, {result.metrics['publish_rate']:.0f} msg/s published"
        )
    return result
