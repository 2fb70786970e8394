"""A dropped connection: the broker reconnects, consumers resume, and what was unacked
at the drop comes back. The network is cut by a proxy on command."""

import asyncio

import aio_pika
import pytest

from mailbag.broker import DeliveryReleased, Message, Queue, RetryPolicy, Topology, UnknownQueue
from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import App, Worker
from mailbag.workers.stores.memory import MemoryStore
from tests.conformance.env import drain, next_delivery
from tests.rabbitmq.service import amqp_url, remove_declared


async def test_unacked_messages_come_back_after_a_drop_and_the_consumer_resumes(proxy, names):
    # Given a consumer, through the proxy, holding 3 of 10 messages unacked
    broker = await open_broker(amqp_url(port=proxy.port), reconnect_interval=0.1)
    try:
        topic = names("orders")
        queue = Queue(names("q"), (topic,))
        await broker.declare(Topology(queues=(queue,)))
        sent = [Message(topic, b'{"n": %d}' % i) for i in range(10)]
        await broker.publish(topic, sent)
        consumer = broker.consume(queue.name, prefetch=3)
        held = [await next_delivery(consumer) for _ in range(3)]

        # When the network drops and the client reconnects
        proxy.cut()
        await asyncio.wait_for(proxy.connected.wait(), 15)

        # Then settling a message held across the drop says it went back
        with pytest.raises(DeliveryReleased):
            await held[0].ack()
        # and the same consumer receives all ten, the three held ones again
        got = await drain(consumer, 10)
        assert {d.message.id for d in got} == {m.id for m in sent}
        assert all(d.attempt == 2 for d in got if d.message.id in {h.message.id for h in held})
        # and the reconnected connection, as logs and errors print it, shows no password
        assert "guest:guest" not in repr(broker._connection.transport)
        await consumer.close()
    finally:
        await broker.close()
        await remove_declared(broker)


async def test_a_publish_during_a_drop_waits_for_the_reconnect_and_is_confirmed(proxy, names):
    # Given a broker through the proxy
    broker = await open_broker(amqp_url(port=proxy.port), reconnect_interval=0.1)
    try:
        topic = names("orders")
        queue = Queue(names("q"), (topic,))
        await broker.declare(Topology(queues=(queue,)))
        # When the network drops just before a publish
        proxy.cut()
        message = Message(topic, b"{}")
        await broker.publish(topic, [message])
        # Then the message is confirmed once reconnected, and there
        async with broker.consume(queue.name) as consumer:
            [d] = await drain(consumer, 1)
        assert d.message.id == message.id
    finally:
        await broker.close()
        await remove_declared(broker)


async def test_a_worker_keeps_handling_across_a_drop(proxy, names, url):
    # Given a worker through the proxy, and a publisher connected directly
    broker = await open_broker(amqp_url(port=proxy.port), reconnect_interval=0.1)
    publisher = await open_broker(url)
    app = App(names("app"))
    topic = names("orders")
    seen: list[str] = []
    arrived = asyncio.Event()

    @app.handler(topic, queue=names("q"), retry=RetryPolicy(max_attempts=5, initial_delay=0.1))
    async def handle(payload, ctx) -> None:
        seen.append(ctx.message_id)
        arrived.set()

    try:
        async with Worker(app, broker, store=MemoryStore()):
            first = Message(topic, b"{}")
            await publisher.publish(topic, [first])
            await asyncio.wait_for(arrived.wait(), 15)
            # When the network drops and comes back
            proxy.cut()
            await asyncio.wait_for(proxy.connected.wait(), 15)
            arrived.clear()
            second = Message(topic, b"{}")
            await publisher.publish(topic, [second])
            # Then the worker handles what is published after it
            await asyncio.wait_for(arrived.wait(), 15)
            assert second.id in seen
    finally:
        await publisher.close()
        await broker.close()
        await remove_declared(broker)


async def test_a_worker_whose_connection_drops_while_its_consumers_open_consumes_after_the_reconnect(proxy, names, url):
    # Given a worker through the proxy, and a publisher connected directly
    broker = await open_broker(amqp_url(port=proxy.port), reconnect_interval=0.1)
    publisher = await open_broker(url)
    app = App(names("app"))
    topic = names("orders")
    arrived = asyncio.Event()

    @app.handler(topic, queue=names("q"))
    async def handle(payload) -> None:
        arrived.set()

    try:
        worker = Worker(app, broker, store=MemoryStore())
        await worker.start()
        try:
            # When the network drops before the consumers have opened their channels
            proxy.cut()
            await asyncio.wait_for(proxy.connected.wait(), 15)
            # Then, once reconnected, the worker still consumes
            await publisher.publish(topic, [Message(topic, b"{}")])
            await asyncio.wait_for(arrived.wait(), 15)
            assert worker.ready
        finally:
            await worker.stop()
    finally:
        await publisher.close()
        await broker.close()
        await remove_declared(broker)


async def test_a_consumer_whose_queue_is_deleted_ends_with_unknown_queue_and_does_not_wait_silently(names):
    # Given a consumer that received a message
    broker = await open_broker(amqp_url())
    try:
        topic = names("orders")
        queue = Queue(names("q"), (topic,))
        await broker.declare(Topology(queues=(queue,)))
        await broker.publish(topic, [Message(topic, b"{}")])
        async with broker.consume(queue.name) as consumer:
            await (await next_delivery(consumer)).ack()
            # When a plain client deletes the queue (the broker cancels the consumer)
            connection = await aio_pika.connect(amqp_url())
            async with connection:
                await (await connection.channel()).queue_delete(queue.name)
            # Then the consumer ends with UnknownQueue instead of waiting for deliveries
            with pytest.raises(UnknownQueue, match="deleted"):
                await asyncio.wait_for(consumer.__anext__(), 15)
    finally:
        await remove_declared(broker)
        await broker.close()
