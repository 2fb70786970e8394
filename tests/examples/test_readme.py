"""The README's first example, run as written on memory, RabbitMQ and SNS/SQS (moto):
its handler publishes a follow-up event no queue subscribes to, and that must neither
fail the handler nor leave anything dead-lettered."""

import re
import types
from pathlib import Path

from mailbag.broker import connect
from mailbag.publishers import Publisher
from mailbag.workers import Worker
from mailbag.workers.metrics import Metrics
from tests.conformance.env import eventually
from tests.rabbitmq.service import remove_declared

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_app() -> types.ModuleType:
    """The first Python block of the README, as a module."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "the README has no Python example"
    module = types.ModuleType("readme_example")
    exec(compile(block.group(1), str(README), "exec"), module.__dict__)
    return module


async def test_the_first_readme_example_handles_its_order_and_dead_letters_nothing(on):
    # Given the README's app on this broker
    example = readme_app()
    url = on.url + (f"&prefix={on.prefix}" if on.name == "sqs" else "")
    broker = await connect(url)
    metrics = Metrics()
    try:
        async with Worker(example.app, broker, metrics=metrics):
            # When an order is placed
            await Publisher(broker).publish(
                "orders.placed", example.OrderPlaced(order_id="o-1", amount_cents=250), key="o-1"
            )
            [handler] = example.app.handlers.values()
            labels = {"queue": handler.queue, "handler": handler.name}

            async def handled() -> bool:
                return metrics.registry.get_sample_value("mailbag_messages_handled_total", labels) == 1

            # Then the handler succeeds at its first attempt, and nothing is retried or dead-lettered
            await eventually(handled, timeout=30, what="the order to be handled")
            for outcome in ("retried", "dead_lettered"):
                assert not metrics.registry.get_sample_value(f"mailbag_messages_{outcome}_total", labels)
            stats = await broker.stats(handler.queue)
            assert (stats.ready, stats.dead_letters) == (0, 0)
        # and the follow-up event no queue takes was counted, not lost silently
        assert broker.unrouted.counts["inventory.reserved"] == 1
    finally:
        await broker.close()
        if on.name == "rabbitmq":
            await remove_declared(broker)
