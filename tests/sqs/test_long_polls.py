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


async def test_removing_a_queue_abandons_the_long_poll_its_closed_consumer_left_in_flight(aws, prefix, caplog):
    # Given a consumer long-polling (5 s) an empty queue, then closed mid-poll
    broker = await open_broker(f"sqs://?region={REGION}&prefix={prefix}&wait=5")
    try:
        topology = Topology(queues=(Queue("jobs", ("jobs",)),))
        await broker.declare(topology)
        consumer = broker.consume("jobs")
        waiting = asyncio.ensure_future(consumer.__anext__())

        async def polling() -> bool:
            return len(broker._polls) == 1

        await eventually(polling, what="the consumer to be in a long poll")
        await consumer.close()
        assert isinstance((await asyncio.gather(waiting, return_exceptions=True))[0], StopAsyncIteration)
        # When its queue is removed
        started = asyncio.get_running_loop().time()
        await broker.remove(topology)
        # Then the poll is abandoned, not waited out: nothing of it calls the queue once it is gone
        assert broker._polls == {}
        assert asyncio.get_running_loop().time() - started < 4, "remove waited for the 5 s poll to end"
        assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
    finally:
        await broker.close()
