"""Redelivery: one consumer retries every n-th message once, asking for a delay.
Measured: where the retried message comes back (how many other messages were
handled meanwhile), the attempt number it comes back with, and the delay observed
against the one asked for."""

from __future__ import annotations

import time
from collections import Counter

from mailbag.broker import Broker, Delivery, RetryPolicy, Topology
from mailbag.harness import stats
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "redelivery"
TITLE = "retried message: position, attempt, delay vs asked"

#: a redelivery this much sooner than asked (share of the delay) is early
EARLY = 0.1


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(settings.messages)
    ledger = Ledger(meter)
    asked = settings.retry_delay
    name = run_name(NAME)
    policy = RetryPolicy(max_attempts=3, initial_delay=asked, multiplier=1.0, max_delay=asked)
    await broker.declare(Topology(queues=(target.queue(name, name, retry=policy),)))
    sent = messages(name, settings.messages, settings.keys)
    to_retry = {m.id for m in sent[:: settings.retry_every]}
    retried: dict[str, tuple[float, int]] = {}  # id -> (when, how many were handled then)
    came_back: set[str] = set()
    positions: list[float] = []
    delays: list[float] = []
    attempts: Counter[int] = Counter()

    async def handle(delivery: Delivery, consumer: int) -> None:
        arrival = ledger.arrived(delivery, consumer)
        if arrival.id in to_retry and arrival.id not in retried:
            retried[arrival.id] = (time.monotonic(), len(ledger.handled))
            ledger.retrying(arrival, asked)
            await delivery.retry(asked)
            return
        if arrival.id in retried and arrival.id not in came_back:
            came_back.add(arrival.id)
            when, handled_then = retried[arrival.id]
            positions.append(len(ledger.handled) - handled_then)
            delays.append(arrival.at - when)
            attempts[arrival.attempt] += 1
        ledger.done(arrival)
        await delivery.ack()

    await publish(broker, name, sent, [ledger], settings.batch)
    lane = Lane(name, handle, 1, settings.prefetch)
    await drain(broker, [ledger], [lane], grace=settings.listen, patience=settings.patience)

    result.count(ledger)
    result.series["positions"] = positions
    result.series["delays"] = delays
    delay = stats.summary(delays)
    result.metrics.update(
        retried=len(retried),
        came_back=len(delays),
        asked_delay=asked,
        delay=delay,
        position=stats.summary(positions),
        comeback_attempts={str(a): n for a, n in sorted(attempts.items())},
    )
    if delays:
        early = [d for d in delays if d < asked * (1 - EARLY)]
        late = [d for d in delays if d > asked + settings.delay_tolerance]
        if early:
            result.warn(f"{len(early)} retried messages came back early (min {min(early):.2f}s, asked {asked:g}s)")
        if late:
            result.warn(
                f"{len(late)} retried messages came back late (max {max(late):.2f}s, asked {asked:g}s "
                f"+ {settings.delay_tolerance:g}s tolerance)"
            )
        wrong = sorted(a for a in attempts if a != 2)
        if wrong:
            result.warn(f"retried messages came back with attempt {wrong}, expected 2")
        result.summary = (
            f"position p50={stats.percentile(positions, 50):.0f} max={max(positions):.0f}; "
            f"delay asked {asked:g}s seen p50={delay['p50']:.2f}s max={delay['max']:.2f}s; "
            f"attempts {dict(sorted(attempts.items()))}"
        )
    return result
