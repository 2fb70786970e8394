"""Retry plumbing on RabbitMQ is bounded: whatever delays are asked, delayed messages
wait in the fixed binary delay levels (`mailbag.broker.rabbitmq.delays`), never in a
queue per delay; those whose queue is deleted meanwhile wait in one catch-all, seen.
(That they never hold up other queues' retries is in the conformance suite.)"""

import asyncio
import json
import logging
import random

from prometheus_client import generate_latest

from mailbag.broker import Message, Queue, Topology
from mailbag.broker import headers as h
from mailbag.broker.rabbitmq import delays, open_broker
from mailbag.dlq import DeadLetters
from mailbag.workers import App, Worker
from mailbag.workers.metrics import Metrics
from tests.cli.test_cli import mailbag
from tests.conformance.env import eventually, next_delivery, nothing_within
from tests.rabbitmq.service import amqp_url, delete_queues, queue_depths, remove_declared

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
    # Then the vhost holds the app's own queues and at most the fixed delay levels of each kind and the catch-all
    own = await asyncio.to_thread(queue_depths, names(""))
    assert set(own) == {q.name for q in queues} | {q.dead_letter_queue for q in queues}
    levels = await asyncio.to_thread(queue_depths, "mailbag.delay")
    assert len(levels) <= 2 * delays.LEVELS + 1
    assert set(levels) <= set(delays.queue_names(delays.prefix_for("classic"))) | set(
        delays.queue_names(delays.prefix_for("quorum"))
    ) | {delays.ORPHANS}

    async def waiting_there() -> bool:  # (a quorum queue reports its depth every few seconds)
        depths = await asyncio.to_thread(queue_depths, "mailbag.delay")
        depths.pop(delays.ORPHANS, None)
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


async def test_orphans_are_kept_counted_in_the_metric_listed_by_mailbag_queues_and_warned_sparingly(
    broker, names, caplog
):
    # Given three messages retried with a delay, and their quorum queue deleted meanwhile
    queue = Queue(names("gone"), (names("topic"),), kind="quorum")
    await broker.declare(Topology(queues=(queue,)))
    topic = queue.topics[0]
    sent = [Message(topic, b"{}", ordering_key=f"k{i}") for i in range(3)]
    await broker.publish(topic, sent)
    async with broker.consume(queue.name, prefetch=3) as consumer:
        for _ in sent:
            await (await next_delivery(consumer)).retry(0.5)
    await delete_queues([queue.name])

    # When their delay is over
    async def kept() -> bool:
        held = await broker.browse(delays.ORPHANS, limit=await broker.orphans() + 3)
        return {m.id for m in sent} <= {m.id for m in held}

    with caplog.at_level(logging.WARNING, logger="mailbag.broker"):
        await eventually(kept, timeout=30, what="the orphans in the catch-all")
        # Then the dead-letter tools read them there: the queue each was for, and why
        orphans = DeadLetters(broker, queue.name, dead_letter_queue=delays.ORPHANS)
        mine = [r for r in await orphans.ls(limit=None) if r.id in {m.id for m in sent}]
        assert {(r.source_queue, r.reason) for r in mine} == {(queue.name, h.ORPHANED)} and len(mine) == 3
        # And the worker's metric counts them, and one warning (not one per poll) says where they are
        metrics = Metrics()
        await metrics.poll_once(broker, [])
        await metrics.poll_once(broker, [])
    exported = generate_latest(metrics.registry).decode()
    [gauge] = [line for line in exported.splitlines() if line.startswith("mailbag_delay_orphans ")]
    assert float(gauge.split()[1]) >= 3
    warnings = [r.getMessage() for r in caplog.records if delays.ORPHANS in r.getMessage()]
    assert len(warnings) == 1 and "was deleted while it waited" in warnings[0]
    # And a worker without metrics (on a connection of its own) warns about them too
    app = App(names("app"))

    @app.handler(names("other-topic"), queue=names("other"))
    def handle(payload: dict) -> None: ...

    other = await open_broker(amqp_url())
    try:
        with caplog.at_level(logging.WARNING, logger="mailbag.broker"):
            async with Worker(app, other):

                async def warned() -> bool:
                    return len([r for r in caplog.records if delays.ORPHANS in r.getMessage()]) == 2

                await eventually(warned, what="the worker's warning about orphans")
    finally:
        await other.close()
        await remove_declared(other)
    # And `mailbag queues` lists the catch-all with them
    listed = await asyncio.to_thread(
        mailbag, "queues", "--queue", queue.dead_letter_queue, "--json", "--broker", amqp_url()
    )
    assert listed.returncode == 0, listed.stderr
    rows = {row["queue"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {queue.dead_letter_queue, delays.ORPHANS} and rows[delays.ORPHANS]["ready"] >= 3
    # And once the queue is back, a replay sends them there, nothing lost
    await broker.declare(Topology(queues=(queue,)))
    result = await orphans.replay(ids=[m.id for m in sent])
    assert (result.removed, result.missing) == (3, [])
    async with broker.consume(queue.name, prefetch=3) as consumer:
        back = [await next_delivery(consumer) for _ in sent]
        for delivery in back:
            await delivery.ack()
    assert sorted(d.message.id for d in back) == sorted(m.id for m in sent)
