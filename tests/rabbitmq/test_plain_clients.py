"""Messages from AMQP clients that are not mailbag (pika, a service in another language):
headers mailbag reserves but cannot read never stall a worker, claimed attempts never
skip a handler, and headers keep their values both ways."""

import asyncio
import logging

import aio_pika
import pytest

from mailbag.broker import Message, Queue, RetryPolicy, Topology
from mailbag.dlq import DeadLetters
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores import open_store
from tests.conformance.env import eventually, next_delivery
from tests.rabbitmq.service import delete_queues


async def plain_publish(url: str, topic: str, body: bytes, headers: dict) -> None:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topic)
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")


def app_on(queue: Queue, runs: list[dict]) -> App:
    app = App("plain")

    @app.handler(queue.topics[0], queue=queue.name, retry=queue.retry, idempotency=False)
    async def work(payload: dict, ctx: Context) -> None:
        runs.append(payload)
        if payload.get("fail"):
            raise RuntimeError("always fails")

    return app


@pytest.mark.parametrize("kind", ["classic", "quorum"])
async def test_unreadable_reserved_headers_dead_letter_at_attempt_one_and_never_stall_a_worker(
    broker, url, names, kind
):
    # Given a worker of concurrency 2, and four messages whose reserved headers cannot be read
    queue = Queue(names("q"), (names("topic"),), retry=RetryPolicy(max_attempts=3, initial_delay=0.1), kind=kind)
    runs: list[dict] = []
    bad = [
        {"x-mailbag-attempt": "two"},
        {"x-delivery-count": "x"},
        {"x-death": "died yesterday"},
        {"x-mailbag-attempt": -3},
    ]
    async with Worker(app_on(queue, runs), broker, concurrency=2, store=await open_store("memory://")):
        for i, headers in enumerate(bad):
            await plain_publish(url, queue.topics[0], b'{"bad": %d}' % i, headers)
        # When healthy messages follow them
        for i in range(4):
            await plain_publish(url, queue.topics[0], b'{"good": %d}' % i, {})

        async def healthy_handled() -> bool:
            return sorted(r.get("good", -1) for r in runs) == [0, 1, 2, 3]

        # Then the healthy ones are handled, and the others never ran and are dead-lettered naming their header
        await eventually(healthy_handled, what="the healthy messages handled")
        letters = DeadLetters(broker, queue.name)

        async def four_dead() -> bool:
            return len(await letters.ls()) == 4

        await eventually(four_dead, what="four dead letters")
    assert all("bad" not in r for r in runs)
    reasons = sorted(r.reason for r in await letters.ls())
    for name in ("x-mailbag-attempt", "x-delivery-count", "x-death"):
        assert any(f"'{name}'" in reason for reason in reasons), (name, reasons)
    assert {r.attempts for r in await letters.ls()} == {1}


async def test_a_claimed_attempt_never_skips_the_handler(broker, url, names):
    # Given a queue of 3 attempts, and a plain message claiming it is at attempt 99
    queue = Queue(names("q"), (names("topic"),), retry=RetryPolicy(max_attempts=3, initial_delay=0.1))
    runs: list[dict] = []
    async with Worker(app_on(queue, runs), broker, concurrency=2, store=await open_store("memory://")):
        await plain_publish(url, queue.topics[0], b'{"fail": true}', {"x-mailbag-attempt": 99})
        letters = DeadLetters(broker, queue.name)

        async def dead() -> bool:
            return len(await letters.ls()) == 1

        # When its handler fails, Then it ran once before it was dead-lettered, with its reason
        await eventually(dead, what="the dead letter")
    assert runs == [{"fail": True}]
    [letter] = await letters.ls()
    assert "failed after 99 attempt(s)" in letter.reason


async def test_float_headers_keep_double_precision_and_a_header_amqp_cannot_carry_fails_at_once(
    broker, url, work_queue
):
    queue = await work_queue()
    topic = queue.topics[0]
    headers = {"ratio": 0.1, "third": 1 / 3, "huge": 1e300, "n": 2**62, "flag": True}
    await broker.publish(topic, [Message(topic, b"{}", headers=headers)])
    async with broker.consume(queue.name) as consumer:
        d = await next_delivery(consumer)
        assert {k: d.message.headers[k] for k in headers} == headers
        await d.ack()
    # a plain client reads the float as text
    await broker.publish(topic, [Message(topic, b"{}", headers={"ratio": 0.1})])
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue.name, ensure=False)
        raw = await source.get(timeout=5)
        assert raw.headers["ratio"] == "0.1"
        await raw.ack()
    for value in (2**70, float("inf")):
        with pytest.raises(ValueError, match="header 'big'"):
            await asyncio.wait_for(broker.publish(topic, [Message(topic, b"{}", headers={"big": value})]), 5)


@pytest.mark.parametrize("kind", ["classic", "quorum"])
async def test_a_message_kept_from_its_handler_stays_kept_while_its_dead_letter_queue_is_gone(
    broker, url, names, kind, caplog
):
    # Given a queue of 3 attempts whose dead-letter queue is gone, a message at its last attempt
    # that a worker crashed on (a plain client took it and closed its channel unsettled), and
    # one whose reserved header cannot be read
    queue = Queue(names("q"), (names("topic"),), retry=RetryPolicy(max_attempts=3), kind=kind)
    await broker.declare(Topology(queues=(queue,)))
    await plain_publish(url, queue.topics[0], b'{"crashed": true}', {"x-mailbag-attempt": 3})
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        taken = await (await channel.get_queue(queue.name)).get(no_ack=False, timeout=5)
        assert taken is not None
        await channel.close()  # unsettled: the broker takes it back as returned
    await plain_publish(url, queue.topics[0], b'{"unreadable": true}', {"x-mailbag-attempt": "two"})
    await delete_queues([queue.dead_letter_queue])
    handed: list[bytes] = []

    async def hand_out(consumer) -> None:
        async for delivery in consumer:
            handed.append(delivery.message.body)
            await delivery.ack()

    def returns() -> int:
        return sum("could not dead-letter" in r.getMessage() for r in caplog.records)

    async with broker.consume(queue.name) as consumer:
        handing = asyncio.ensure_future(hand_out(consumer))
        with caplog.at_level(logging.WARNING, logger="mailbag"):
            # When both failed to dead-letter twice (each came back once after its pause)
            async def back_twice_or_run() -> bool:
                return bool(handed) or returns() >= 4

            await eventually(back_twice_or_run, what="two failed dead-letterings of each message")
            assert handed == []
            # and the dead-letter queue is restored
            await broker.declare(Topology(queues=(queue,)))
            letters = DeadLetters(broker, queue.name)

            async def both_dead() -> bool:
                return len(await letters.ls()) == 2

            await eventually(both_dead, timeout=30, what="both dead-lettered")
        handing.cancel()
        await asyncio.gather(handing, return_exceptions=True)
    # Then neither was ever handed to a handler, and each is dead-lettered with its reason
    assert handed == []
    reasons = sorted(r.reason for r in await letters.ls())
    assert any("'x-mailbag-attempt'" in reason for reason in reasons), reasons
    assert (await broker.stats(queue.name)).ready == 0
