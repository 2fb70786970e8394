"""Retry plumbing on RabbitMQ is bounded: whatever delays are asked, delayed messages
wait in the fixed binary delay levels (`mailbag.broker.rabbitmq.delays`), never in a
queue per delay."""

import asyncio
import random

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.rabbitmq import delays
from tests.conformance.env import eventually, next_delivery, nothing_within
from tests.rabbitmq.service import queue_depths

RETRIES = 1000


def test_a_delay_is_spelled_in_bits_and_never_rounded_down():
    assert delays.units(0.05) == 5 and delays.units(0.051) == 6 and delays.units(0.001) == 1
    assert delays.routing_key(5).split(".")[-3:] == ["1", "0", "1"]
    assert len(delays.routing_key(5).split(".")) == delays.LEVELS
    assert delays.entry("p", 5) == "p.2"
    assert delays.units(3600) * delays.UNIT >= 3600 and delays.MAX_DELAY > 30 * 24 * 3600


async def test_a_thousand_random_delays_leave_only_the_fixed_delay_queues(broker, names):
    # Given a classic and a quorum queue
    queues = [Queue(names(kind), (names(f"topic-{kind}"),), kind=kind) for kind in ("classic", "quorum")]
    await broker.declare(Topology(queues=tuple(queues)))
    rng = random.Random(16)
    for queue in queues:
        topic = queue.topics[0]
        await broker.publish(topic, [Message(topic, b"{}", ordering_key=f"k{i}") for i in range(RETRIES // 2)])
        # When every message is retried once with a random delay from 0.05 s to 1 h
        async with broker.consume(queue.name, prefetch=100) as consumer:
            for _ in range(RETRIES // 2):
                delivery = await next_delivery(consumer)
                await delivery.retry(rng.uniform(0.05, 3600))
    # Then the vhost holds the app's own queues and at most the fixed delay levels of each kind
    own = await asyncio.to_thread(queue_depths, names(""))
    assert set(own) == {q.name for q in queues} | {q.dead_letter_queue for q in queues}
    levels = await asyncio.to_thread(queue_depths, "mailbag.delay")
    assert len(levels) <= 2 * delays.LEVELS
    assert set(levels) <= set(delays.queue_names(delays.prefix_for("classic"))) | set(
        delays.queue_names(delays.prefix_for("quorum"))
    )

    async def waiting_there() -> bool:  # (a quorum queue reports its depth every few seconds)
        depths = await asyncio.to_thread(queue_depths, "mailbag.delay")
        return sum(depths.values()) >= 0.9 * RETRIES  # one moving between levels, or back already, is not there

    await eventually(waiting_there, timeout=60, what="the delayed messages in the delay levels")


async def test_a_delayed_message_reaches_its_own_queue_only(broker, names):
    # Given two queues bound to the same delay levels
    mine, other = (Queue(names(n), (names(f"topic-{n}"),)) for n in ("mine", "other"))
    await broker.declare(Topology(queues=(mine, other)))
    topic = mine.topics[0]
    await broker.publish(topic, [Message(topic, b"{}")])
    # When a message of one is retried with a short delay
    async with broker.consume(mine.name) as consumer:
        await (await next_delivery(consumer)).retry(0.05)
        back = await next_delivery(consumer)
        await back.ack()
    # Then it came back to its queue, and the other queue got nothing
    assert back.attempt == 2
    async with broker.consume(other.name) as consumer:
        assert await nothing_within(consumer, 1.0)
