"""Plain aio-pika clients on either side: what we publish is readable from the AMQP
properties alone, and what a plain client publishes reaches our handlers."""

import asyncio
from datetime import UTC, datetime

import aio_pika
from pydantic import BaseModel

from mailbag.broker import Message, Queue, Topology
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.memory import MemoryStore
from tests.conformance.env import next_delivery


class OrderCreated(BaseModel):
    order_id: str
    amount: int


async def test_a_plain_aio_pika_publisher_reaches_a_typed_handler(broker, url, names):
    # Given a worker with a typed handler on a topic
    topic = names("orders")
    app = App(names("app"))
    got: list[tuple[OrderCreated, Context]] = []
    handled = asyncio.Event()

    @app.handler(topic, queue=names("q"), model=OrderCreated)
    async def handle(order: OrderCreated, ctx: Context) -> None:
        got.append((order, ctx))
        handled.set()

    async with Worker(app, broker, store=MemoryStore()):
        # When a plain aio-pika client publishes JSON to the topic's exchange
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topic)
            await exchange.publish(
                aio_pika.Message(
                    b'{"order_id": "o-7", "amount": 3}',
                    content_type="application/json",
                    message_id="plain-1",
                    correlation_id="corr-7",
                    type="OrderCreated",
                    headers={"tenant": "acme"},
                    timestamp=datetime.now(UTC),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="",
            )
        await asyncio.wait_for(handled.wait(), 15)

    # Then the handler gets the model, and the context the AMQP properties
    [(order, ctx)] = got
    assert order == OrderCreated(order_id="o-7", amount=3)
    m = ctx.message
    assert (m.id, m.topic, m.correlation_id, m.type, m.content_type) == (
        "plain-1",
        topic,
        "corr-7",
        "OrderCreated",
        "application/json",
    )
    assert m.headers == {"tenant": "acme"} and ctx.attempt == 1


async def test_a_plain_aio_pika_consumer_reads_what_we_publish(broker, url, names):
    # Given a queue of ours
    topic = names("orders")
    queue = Queue(names("q"), (topic,))
    await broker.declare(Topology(queues=(queue,)))
    sent = Message(
        topic,
        b'{"order_id": "o-1", "amount": 5}',
        type="OrderCreated",
        headers={"tenant": "acme", "priority": 5},
        correlation_id="corr-1",
        causation_id="cause-1",
    )
    # When we publish and a plain aio-pika client consumes
    await broker.publish(topic, [sent])
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue.name)
        raw = await source.get(timeout=5)
        await raw.ack()
    # Then every field is a native AMQP property and the body is the bare JSON
    assert raw.body == sent.body
    assert (raw.message_id, raw.correlation_id, raw.type, raw.content_type) == (
        sent.id,
        "corr-1",
        "OrderCreated",
        "application/json",
    )
    assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert abs((raw.timestamp - sent.created_at).total_seconds()) < 1
    assert raw.headers["tenant"] == "acme" and raw.headers["priority"] == 5
    assert raw.exchange == topic


async def test_a_plain_client_sending_straight_to_a_queue_is_consumed(broker, url, names):
    # Given a queue, and a plain client that sends to it by name with no message id
    queue = Queue(names("q"), (names("orders"),))
    await broker.declare(Topology(queues=(queue,)))
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"raw bytes"), routing_key=queue.name)
    # When we consume it
    async with broker.consume(queue.name) as consumer:
        d = await next_delivery(consumer)
        await d.ack()
    # Then it arrives with its body, an id and the queue as its topic
    assert d.message.body == b"raw bytes" and d.message.id and d.attempt == 1
