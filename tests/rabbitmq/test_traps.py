"""Known traps of AMQP and aio-pika, each pinned by a test."""

import asyncio
import socket
import time

import aio_pika
import pytest

from mailbag.broker import (
    BrokerUnavailable,
    DeliveryReleased,
    Message,
    PublishFailed,
    Queue,
    Topology,
    TopologyError,
    Unroutable,
)
from mailbag.broker import headers as h
from mailbag.broker.rabbitmq import open_broker
from tests.conformance.env import drain, eventually, next_delivery, nothing_within
from tests.rabbitmq.service import amqp_url


async def test_aio_pika_returns_an_unroutable_message_and_we_count_it_or_raise_when_mandatory(broker, url, names):
    # Given a topic no queue is bound to
    topic = names("void")
    await broker.declare(Topology(topics=(topic,)))
    message = Message(topic, b"{}")
    # When plain aio-pika publishes to it with mandatory, it gets the message back, no error
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(topic)
        result = await exchange.publish(aio_pika.Message(b"{}", message_id="x"), routing_key="", mandatory=True)
    assert getattr(result, "body", None) == b"{}"  # the returned message, not an ack
    # Then our publish counts it, and raises naming it when mandatory
    await broker.publish(topic, [message])
    assert broker.unrouted.counts[topic] == 1
    with pytest.raises(Unroutable, match=topic) as failed:
        await broker.publish(topic, [message], mandatory=True)
    assert failed.value.message_ids == [message.id]


async def test_aio_pika_messages_are_transient_by_default_and_ours_persistent(broker, url, names, work_queue):
    # Given a queue holding a message we published, one we retried and one we dead-lettered
    queue = await work_queue()
    topic = queue.topics[0]
    await broker.publish(topic, [Message(topic, b"1"), Message(topic, b"2"), Message(topic, b"3")])
    async with broker.consume(queue.name, prefetch=3) as consumer:
        first, second, _ = [await next_delivery(consumer) for _ in range(3)]
        await first.retry(0)
        await second.dead_letter("bad")
    # When a plain client reads them
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        raws = []
        for name in (queue.name, queue.name, queue.dead_letter_queue):
            raws.append(await (await channel.get_queue(name)).get(timeout=5))
    # Then all are persistent, unlike aio-pika's own default
    assert aio_pika.Message(b"").delivery_mode != aio_pika.DeliveryMode.PERSISTENT
    assert {r.body for r in raws} == {b"1", b"2", b"3"}
    assert all(r.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for r in raws)


async def test_a_retry_cancelled_midway_still_completes_and_loses_nothing(broker, work_queue):
    # Given a delivery being retried with a delay
    queue = await work_queue(max_attempts=5)
    topic = queue.topics[0]
    [sent] = [Message(topic, b"{}")]
    await broker.publish(topic, [sent])
    async with broker.consume(queue.name) as consumer:
        d = await next_delivery(consumer)
        task = asyncio.create_task(d.retry(0.2))
        # When its task is cancelled once the copy is in flight
        await asyncio.sleep(0)  # a yield: the retry task runs up to its publish
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Then the retry completes anyway: the message comes back once, as attempt 2
        again = await next_delivery(consumer)
        assert (again.message.id, again.attempt) == (sent.id, 2)
        await again.ack()
        assert await nothing_within(consumer, 0.5)


async def test_settling_after_the_channel_closed_under_a_handler_raises_released(broker, work_queue):
    # Given handlers holding three deliveries
    queue = await work_queue()
    topic = queue.topics[0]
    await broker.publish(topic, [Message(topic, b"{}") for _ in range(3)])
    consumer = broker.consume(queue.name, prefetch=3)
    held = [await next_delivery(consumer) for _ in range(3)]
    # When their consumer's channel closes
    await consumer.close()
    # Then any settlement says the message went back, and all three are there for the next consumer
    for settle in (held[0].ack(), held[1].retry(0), held[2].dead_letter("x")):
        with pytest.raises(DeliveryReleased):
            await settle
    async with broker.consume(queue.name, prefetch=3) as again:
        assert {d.message.id for d in await drain(again, 3)} == {d.message.id for d in held}


async def test_the_first_connect_fails_fast_when_the_broker_is_down():
    # Given a port nothing listens on
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    # When we connect, Then it fails at once, saying where and how to start it, password masked
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as failed:
        await open_broker(url)
    assert time.monotonic() - started < 5
    text = str(failed.value)
    assert f"127.0.0.1:{port}" in text and "s3cret" not in text and "***" in text and "wait=" in text


async def test_the_first_connect_waits_for_the_broker_when_asked(proxy, names):
    # Given a broker that refuses connections at first
    proxy.refuse = True
    opening = asyncio.create_task(open_broker(amqp_url(port=proxy.port), wait=30))
    # When it comes up while we wait
    await asyncio.wait_for(proxy.refused.wait(), 10)
    proxy.refuse = False
    # Then the connect succeeds
    broker = await asyncio.wait_for(opening, 30)
    await broker.close()
    assert proxy.accepted >= 1


async def test_a_conflicting_redeclaration_names_the_queue_and_the_setting(broker, names):
    # Given a classic queue
    name = names("q")
    await broker.declare(Topology(queues=(Queue(name, (names("t"),)),)))
    # When it is redeclared as quorum, or ordered
    for changed, setting in (
        (Queue(name, (names("t"),), kind="quorum"), "kind"),
        (Queue(name, (names("t"),), ordered=True), "ordered"),
    ):
        with pytest.raises(TopologyError) as failed:
            await broker.declare(Topology(queues=(changed,)))
        # Then the error names the queue and our setting, and the broker goes on working
        assert name in str(failed.value) and setting in str(failed.value)
    await broker.declare(Topology(queues=(Queue(name, (names("t"),)),)))


async def test_a_quorum_crash_loop_ends_in_the_dlq_by_the_brokers_delivery_limit(broker, url, work_queue):
    # Given a quorum queue allowing 2 attempts
    queue = await work_queue(kind="quorum", max_attempts=2)
    topic = queue.topics[0]
    [sent] = [Message(topic, b"{}", headers={"tenant": "acme"})]
    await broker.publish(topic, [sent])
    # When a plain consumer keeps putting it back (a crash loop no worker of ours sees)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue.name)
        for _ in range(2):
            raw = await source.get(timeout=5)
            await raw.nack(requeue=True)

    # Then the broker dead-letters it, and it reads like our own dead letters
    async def dead() -> bool:
        return (await broker.stats(queue.name)).dead_letters == 1

    await eventually(dead, what="the broker to dead-letter the message")
    [letter] = await broker.browse(queue.dead_letter_queue)
    assert (letter.id, letter.topic, letter.headers["tenant"]) == (sent.id, topic, "acme")
    assert letter.headers[h.DEAD_REASON] == h.DELIVERY_LIMIT_EXCEEDED
    assert letter.headers[h.ORIGIN_QUEUE] == queue.name


async def test_a_classic_crash_loop_is_dead_lettered_by_the_consumer(broker, work_queue):
    # Given a classic queue allowing one attempt, and a consumer that died holding it
    queue = await work_queue(max_attempts=1)
    topic = queue.topics[0]
    await broker.publish(topic, [Message(topic, b"{}")])
    crashed = broker.consume(queue.name)
    await next_delivery(crashed)
    await crashed.close()
    # When it comes back past its attempts, Then the next consumer dead-letters it unseen
    async with broker.consume(queue.name) as consumer:
        assert await nothing_within(consumer, 0.5)
    [letter] = await broker.browse(queue.dead_letter_queue)
    assert letter.headers[h.DEAD_REASON] == h.DELIVERY_LIMIT_EXCEEDED


async def test_a_dead_letter_fits_the_frame_beside_large_headers_of_its_own(broker, work_queue):
    # Given a message whose own headers take 100 kB of the 128 KiB frame
    queue = await work_queue()
    own = {"trace": "t" * 100_000}
    await broker.publish(queue.topics[0], [Message(queue.topics[0], b"{}", headers=own)])
    connection = broker._connection.transport
    async with broker.consume(queue.name) as consumer:
        d = await next_delivery(consumer)
        # When it is dead-lettered with a 200 kB reason
        await d.dead_letter("refused: " + "r" * 200_000)
    # Then its headers and the reason's head fit in one frame: the broker kept the connection
    assert broker._connection.transport is connection
    [dead] = await broker.browse(queue.dead_letter_queue)
    assert dead.headers["trace"] == own["trace"]
    reason = str(dead.headers[h.DEAD_REASON])
    assert reason.startswith("refused: rrrr") and "bytes cut" in reason
    assert broker.frame_max == 131_072


async def test_a_dead_letter_that_cannot_fit_the_frame_is_refused_before_it_is_sent(broker, work_queue):
    # Given a message whose own headers nearly fill the frame
    queue = await work_queue()
    await broker.publish(queue.topics[0], [Message(queue.topics[0], b"{}", headers={"trace": "t" * 130_850})])
    connection = broker._connection.transport
    async with broker.consume(queue.name) as consumer:
        d = await next_delivery(consumer)
        # When it is dead-lettered, its stamp cannot fit beside them
        with pytest.raises(PublishFailed, match="header frame"):
            await d.dead_letter("refused")
        await d.release()
        # Then nothing was sent (the broker would have closed the connection), and it is back
        again = await next_delivery(consumer)
        assert again.message.id == d.message.id
        await again.ack()
    assert broker._connection.transport is connection
