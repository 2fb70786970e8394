"""Ordering: N messages over K ordering keys, handled by one consumer and then by C
competing consumers; per-key order violations and global inversions of each.

Handling takes a short random time (seeded), so competing consumers finish out of
order exactly when the broker lets two messages of one key be in flight at once.
Order is judged where it matters to a handler: the order handling completed in."""

from __future__ import annotations

import asyncio
import random

from mailbag.broker import Broker, Delivery, Topology
from mailbag.harness import stats
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "ordering"
TITLE = "order per key and global, 1 and C consumers"


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(2 * settings.messages)
    rng = random.Random(settings.seed)
    for consumers in (1, settings.consumers):
        ledger = Ledger(meter)
        await _one_pass(broker, target, settings, ledger, consumers, rng)
        where = f"{consumers} consumer{'s' if consumers > 1 else ''}"
        first = ledger.first_handled()
        violations = stats.key_violations((ledger.sent[a.id].key, ledger.sent[a.id].seq) for a in first)
        inverted = stats.inversions([ledger.sent[a.id].seq for a in first])
        pairs = len(first) * (len(first) - 1) // 2
        result.metrics[f"key_violations_{consumers}"] = violations
        result.metrics[f"inversions_{consumers}"] = inverted
        result.metrics[f"inversion_share_{consumers}"] = inverted / pairs if pairs else 0.0
        result.count(ledger, where)
        if violations and target.ordered:
            result.warn(f"{violations} per-key order violations with {where} on a queue that promises order per key")
    result.metrics["consumers"] = settings.consumers
    c = settings.consumers
    result.summary = (
        f"key violations 1c={result.metrics['key_violations_1']} {c}c={result.metrics[f'key_violations_{c}']}; "
        f"inversions 1c={result.metrics['inversion_share_1']:.1%} {c}c={result.metrics[f'inversion_share_{c}']:.1%}"
    )
    return result


async def _one_pass(
    broker: Broker, target: Target, settings: Settings, ledger: Ledger, consumers: int, rng: random.Random
) -> None:
    name = run_name(f"{NAME}{consumers}")
    queue = target.queue(name, name)
    await broker.declare(Topology(queues=(queue,)))

    async def handle(delivery: Delivery, consumer: int) -> None:
        arrival = ledger.arrived(delivery, consumer)
        await asyncio.sleep(rng.uniform(0, settings.jitter))  # the handler's work
        ledger.done(arrival)
        await delivery.ack()

    await publish(broker, name, messages(name, settings.messages, settings.keys), [ledger], settings.batch)
    lane = Lane(name, handle, consumers, settings.prefetch)
    await drain(broker, [ledger], [lane], grace=settings.listen, patience=settings.patience)
