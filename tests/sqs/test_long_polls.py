"""Long polls run on a pool of their own: consumers waiting on empty queues never hold
up publishes, deletes or visibility heartbeats, however many there are."""

from __future__ import annotations

import asyncio

from mailbag.broker import Queue, Topology
from mailbag.broker.sqs import open_broker
from tests.conformance.env import eventually
from tests.moto_server import REGION
from tests.sqs.helpers import message


async def test_a_publish_goes_out_while_more_consumers_long_poll_than_the_pool_has_threads(aws, prefix):
    # Given a broker whose call pool has 2 threads, and 8 consumers long-polling (5 s) empty queues
    broker = await open_broker(f"sqs://?region={REGION}&prefix={prefix}&wait=5&threads=2")
    consumers = []
    try:
        queues = [Queue(f"idle{i}", (f"idle{i}",)) for i in range(8)]
        await broker.declare(Topology(queues=(*queues, Queue("jobs", ("jobs",)))))
        consumers = [broker.consume(q.name) for q in queues]
        waiting = [asyncio.ensure_future(c.__anext__()) for c in consumers]

        async def all_polling() -> bool:
            return len(broker._polls) == len(consumers)

        await eventually(all_polling, what="every consumer to be in a long poll")
        # When a message is published, and one is received and acked on another queue
        await broker.publish("jobs", [message("jobs")])
        async with broker.consume("jobs") as jobs:
            await (await jobs.__anext__()).ack()
        # Then all that happened while every long poll was still waiting
        assert not any(w.done() for w in waiting), "a long poll ended before the publish went out"
    finally:
        for c in consumers:
            await c.close()
        await broker.close()
