"""A publish whose confirm is lost reports the message as `unknown` (it may have been
delivered: republish under the same id only), never as "not published", although
the publisher retried it after a timed-out attempt."""

from __future__ import annotations

import asyncio

import pytest

from mailbag.broker import Message, PublishFailed, Queue, Topology
from mailbag.broker.rabbitmq import open_broker
from mailbag.publishers import Publisher, PublishError, PublisherSettings
from tests.conformance.env import next_delivery
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared


async def test_a_message_delivered_without_a_confirm_is_reported_unknown_not_failed():
    # Given a publisher through a proxy, and a queue on its topic
    stem = run_name("po")
    topic, queue = f"{stem}.orders", Queue(f"{stem}.orders.q", (f"{stem}.orders",))
    observer = await open_broker(amqp_url())
    await observer.declare(Topology(queues=(queue,)))
    async with CuttingProxy(HOST, PORT) as proxy:
        broker = await open_broker(amqp_url(port=proxy.port), publish_timeout=1.0)
        publisher = Publisher(broker, settings=PublisherSettings(deadline=2.0, attempt_timeout=0.5))
        try:
            await publisher.publish(topic, {"warm": True})
            # When the broker's answers stop reaching the client: the publish arrives, its confirm does not
            proxy.mute = True
            with pytest.raises(PublishError) as caught:
                await publisher.publish(topic, {"n": 1}, message_id=f"{stem}-m1")
        finally:
            proxy.blackhole = True
            await broker.close()
    # Then the error calls the message's outcome unknown, not failed, and it was in fact delivered
    error = caught.value
    assert error.unknown == [f"{stem}-m1"] and error.failed == [] and error.sent == []
    assert "not published: none" in str(error) and "outcome unknown" in str(error)
    async with observer.consume(queue.name, prefetch=10) as consumer:
        ids = set()
        while f"{stem}-m1" not in ids:
            delivery = await next_delivery(consumer)
            ids.add(delivery.message.id)
            await delivery.ack()
    await observer.close()
    await remove_declared(observer)


async def test_concurrent_publishes_with_the_connection_down_each_fail_within_the_publish_timeout():
    # Given a broker through a proxy, publish timeout 1 s, its publishing channel open
    stem = run_name("po")
    topic, queue = f"{stem}.orders", Queue(f"{stem}.orders.q", (f"{stem}.orders",))
    async with CuttingProxy(HOST, PORT) as proxy:
        broker = await open_broker(amqp_url(port=proxy.port), publish_timeout=1.0)
        try:
            await broker.declare(Topology(queues=(queue,)))
            await broker.publish(topic, [Message(topic, b"{}")])
            # When the connection drops, reconnects are refused, and five publishes start at once
            proxy.refuse = True
            proxy.cut()
            loop = asyncio.get_running_loop()
            started = loop.time()

            async def publish_one(n: int) -> float:
                with pytest.raises(PublishFailed):
                    await broker.publish(topic, [Message(topic, b'{"n": %d}' % n)])
                return loop.time() - started

            async with asyncio.timeout(30):
                took = await asyncio.gather(*(publish_one(n) for n in range(5)))
        finally:
            proxy.refuse = False
            await broker.close()
            await remove_declared(broker)
    # Then each fails within about one publish timeout, not one after another
    assert max(took) < 2.5, took
