"""Dead-letter: a consumer retries every delivery until the broker gives up; every
message must reach the dead-letter queue after exactly the policy's attempts, with
its reason and attempt count stamped on it."""

from __future__ import annotations

from collections import Counter

from mailbag.broker import Broker, Delivery, RetryPolicy, Topology
from mailbag.broker import headers as h
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "dead-letter"
TITLE = "attempts before the DLQ vs the policy"


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    count = settings.dead_letter_messages
    meter.expect(count)
    ledger = Ledger(meter)
    name = run_name(NAME)
    policy = RetryPolicy(
        max_attempts=settings.max_attempts,
        initial_delay=settings.retry_delay,
        multiplier=1.0,
        max_delay=settings.retry_delay,
    )
    queue = target.queue(name, name, retry=policy)
    await broker.declare(Topology(queues=(queue,)))
    tries: Counter[str] = Counter()
    stamped: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    async def failing(delivery: Delivery, consumer: int) -> None:
        arrival = ledger.arrived(delivery, consumer)
        tries[arrival.id] += 1
        ledger.retrying(arrival, policy.delay(delivery.attempt))
        await delivery.retry(policy.delay(delivery.attempt))

    async def dead(delivery: Delivery, consumer: int) -> None:
        ledger.done(ledger.arrived(delivery, consumer))
        stamped[str(delivery.message.headers.get(h.ATTEMPTS, "missing"))] += 1
        reasons[str(delivery.message.headers.get(h.DEAD_REASON, "missing"))] += 1
        await delivery.ack()

    await publish(broker, name, messages(name, count, settings.keys), [ledger], settings.batch)
    lanes = [Lane(name, failing, 1, settings.prefetch), Lane(queue.dead_letter_queue, dead, 1, settings.prefetch)]
    await drain(broker, [ledger], lanes, grace=settings.listen, patience=settings.patience)

    result.count(ledger, "the DLQ")
    dead_ids = {a.id for a in ledger.handled}
    observed = Counter(tries[i] for i in dead_ids)
    result.series["attempts"] = [float(tries[i]) for i in dead_ids]
    result.metrics.update(
        policy_attempts=policy.max_attempts,
        attempts_observed={str(a): n for a, n in sorted(observed.items())},
        attempts_stamped=dict(sorted(stamped.items())),
        reasons=dict(reasons),
    )
    off = {a: n for a, n in observed.items() if a != policy.max_attempts}
    for attempts, n in sorted(off.items()):
        result.warn(f"{n} messages were tried {attempts} times before the DLQ; the policy says {policy.max_attempts}")
    result.summary = (
        f"{len(dead_ids)}/{count} in the DLQ; tries seen {dict(sorted(observed.items()))} "
        f"(policy {policy.max_attempts}); stamped attempts {dict(sorted(stamped.items()))}"
    )
    return result
