"""Fan-out: one topic, several subscribed queues; every queue must get every message."""

from __future__ import annotations

from mailbag.broker import Broker, Delivery, Topology
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "fan-out"
TITLE = "every subscribed queue gets every message"


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(settings.messages * settings.fan_out_queues)
    topic = run_name(NAME)
    queues = [target.queue(f"{topic}-{i}", topic) for i in range(settings.fan_out_queues)]
    await broker.declare(Topology(queues=tuple(queues)))
    ledgers = {q.name: Ledger(meter) for q in queues}

    def handler(ledger: Ledger):
        async def handle(delivery: Delivery, consumer: int) -> None:
            ledger.done(ledger.arrived(delivery, consumer))
            await delivery.ack()

        return handle

    await publish(
        broker, topic, messages(topic, settings.messages, settings.keys), list(ledgers.values()), settings.batch
    )
    lanes = [Lane(name, handler(ledger), 1, settings.prefetch) for name, ledger in ledgers.items()]
    await drain(broker, list(ledgers.values()), lanes, grace=settings.listen, patience=settings.patience)

    complete = 0
    for name, ledger in ledgers.items():
        result.count(ledger, name)
        complete += not ledger.lost
    result.metrics.update(
        queues=len(queues),
        complete_queues=complete,
        received={name: len(ledger.sent) - len(ledger.lost) for name, ledger in ledgers.items()},
    )
    result.summary = f"{complete}/{len(queues)} queues got all {settings.messages} messages"
    return result
