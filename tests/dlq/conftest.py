"""The brokers the dead-letter tests run on, and the steps they share.

The brokers are the conformance suite's backends (one per kind of broker), so a broker
that passes the suite is exercised here the same way.
"""

from __future__ import annotations

import pytest

from mailbag.broker import Broker, Message
from tests.conformance.conftest import BACKENDS as CONFORMANCE_BACKENDS
from tests.conformance.env import next_delivery

#: one backend per kind of broker: the variants (ordered, quorum, ...) add nothing here
KINDS = ("memory", "rabbitmq-classic", "sqs-moto")
BACKENDS = [b for b in CONFORMANCE_BACKENDS if b.name in KINDS]


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
async def env(request):
    async with request.param.open() as e:
        yield e


async def dead_letter_all(broker: Broker, queue: str, messages: list[Message]) -> list[Message]:
    """Send `messages` to `queue` and dead-letter each through a consumer, as a worker
    would, with a reason and an error. Returns them as the consumer first saw them."""
    await broker.send(queue, messages)
    seen: dict[str, Message] = {}
    async with broker.consume(queue, prefetch=len(messages)) as consumer:
        while len(seen) < len(messages):
            delivery = await next_delivery(consumer)
            seen[delivery.message.id] = delivery.message
            await delivery.dead_letter("poisoned in a test", ValueError(f"bad payload {delivery.message.id}"))
    return [seen[m.id] for m in messages]
