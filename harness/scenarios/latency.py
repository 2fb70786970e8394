"""Latency and throughput: one publisher, C competing consumers that ack at once;
p50 / p95 / p99 publish-to-handle latency and messages per second, end to end and
for publishing alone, with one publish call at a time and with several in flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any

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


#: publish calls in flight at once for the pipelined figure
PIPELINE = 16


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    """Twice: one publisher waiting for each call's confirm before the next (the latency
    figures and `throughput`), then `PIPELINE` calls in flight at once
    (`throughput_pipelined`): the first is one sequential client's rate, the second
    closer to what the broker itself sustains."""
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(2 * settings.messages)
    first, throughput, publish_rate = await _measure(broker, target, settings, meter, result, in_flight=1)
    latencies = [(a.at - sent) * 1000 for a, sent in first]
    result.series["latency_ms"] = latencies
    latency = stats.summary(latencies)
    _, pipelined, pipelined_publish = await _measure(broker, target, settings, meter, result, in_flight=PIPELINE)
    result.metrics.update(
        latency_ms=latency,
        throughput=throughput,
        publish_rate=publish_rate,
        throughput_pipelined=pipelined,
        publish_rate_pipelined=pipelined_publish,
        consumers=settings.consumers,
    )
    if first:
        result.summary = (
            f"p50={latency['p50']:.1f}ms p95={latency['p95']:.1f}ms p99={latency['p99']:.1f}ms; "
            f"{throughput:.0f} msg/s end to end, {publish_rate:.0f} msg/s published (one call at a time); "
            f"{pipelined:.0f} msg/s end to end, {pipelined_publish:.0f} msg/s published ({PIPELINE} calls in flight)"
        )
    return result


async def _measure(
    broker: Broker, target: Target, settings: Settings, meter: Meter, result: ScenarioResult, *, in_flight: int
) -> tuple[list[tuple[Any, float]], float, float]:
    """Publish `settings.messages` on a queue of their own and drain them: the first
    arrival of each with its send time, the end-to-end and the publish rates."""
    ledger = Ledger(meter)
    name = run_name(NAME)
    await broker.declare(Topology(queues=(target.queue(name, name),)))

    async def handle(delivery: Delivery, consumer: int) -> None:
        ledger.done(ledger.arrived(delivery, consumer))
        await delivery.ack()

    async def publisher() -> float:
        started = time.monotonic()
        batch = messages(name, settings.messages, settings.keys)
        await publish(broker, name, batch, [ledger], settings.batch, in_flight)
        return time.monotonic() - started

    lane = Lane(name, handle, settings.consumers, settings.prefetch)
    started = time.monotonic()
    publishing = asyncio.create_task(publisher())
    try:
        await drain(
            broker,
            [ledger],
            [lane],
            grace=settings.listen,
            patience=settings.patience,
            publisher=publishing,
        )
    finally:
        if not publishing.done():
            publishing.cancel()
            result.fail(f"publishing stalled: nothing happened for {settings.patience:g}s")
        [publish_seconds] = await asyncio.gather(publishing, return_exceptions=True)
    if not isinstance(publish_seconds, float):
        publish_seconds = 0.0
    result.count(ledger, "" if in_flight == 1 else f"the pipelined run ({in_flight} calls in flight)")
    first = ledger.first_handled()
    span = (first[-1].at - started) if first else 0.0
    return (
        [(a, ledger.sent[a.id].at) for a in first],
        len(first) / span if span else 0.0,
        settings.messages / publish_seconds if publish_seconds else 0.0,
    )
