"""The semantics every broker must pass (DESIGN.md). Runs once per backend.

Assertions check that every published id arrives and tolerate duplicates, since
delivery is at least once.
"""

import asyncio
from datetime import UTC

import pytest

from mailbag.broker import AlreadySettled, BrokerClosed, Message, Subscription, UnknownQueue, UnknownTopic
from mailbag.broker import headers as h
from tests.conformance.env import drain, eventually, next_delivery, nothing_within


def _msgs(topic: str, n: int, **kw) -> list[Message]:
    return [Message(topic=topic, body=b'{"n": %d}' % i, **kw) for i in range(n)]


async def test_roundtrip_keeps_every_field(env):
    topic = env.name("orders")
    q = env.queue("roundtrip", topic)
    await env.declare(q)
    sent = Message(
        topic=topic,
        body=b'{"order": 1, "note": "caf\xc3\xa9"}',
        content_type="application/json",
        type="OrderCreated",
        headers={"tenant": "acme", "priority": 5},
        correlation_id="corr-1",
        causation_id="cause-1",
        ordering_key="order-1",
    )
    await env.broker.publish(topic, [sent])
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        got = d.message
        assert (got.id, got.topic, got.body, got.content_type, got.type) == (
            sent.id,
            topic,
            sent.body,
            "application/json",
            "OrderCreated",
        )
        assert got.headers["tenant"] == "acme" and int(got.headers["priority"]) == 5
        assert (got.correlation_id, got.causation_id, got.ordering_key) == ("corr-1", "cause-1", "order-1")
        assert got.created_at.tzinfo is not None
        assert abs((got.created_at - sent.created_at.astimezone(UTC)).total_seconds()) < 1.0
        assert d.queue == q.name and d.attempt == 1
        await d.ack()


async def test_fan_out_reaches_every_subscribed_queue(env):
    topic = env.name("orders")
    queues = [env.queue(f"fan{i}", topic) for i in range(3)]
    await env.declare(*queues)
    sent = _msgs(topic, 5, ordering_key="k")
    await env.broker.publish(topic, sent)
    for q in queues:
        async with env.broker.consume(q.name) as consumer:
            got = await drain(consumer, 5)
        assert {d.message.id for d in got} == {m.id for m in sent}


async def test_topics_are_isolated(env):
    a, b = env.name("a"), env.name("b")
    qa, qb = env.queue("onlya", a), env.queue("onlyb", b)
    await env.declare(qa, qb)
    await env.broker.publish(a, _msgs(a, 3))
    async with env.broker.consume(qb.name) as consumer:
        assert await nothing_within(consumer, 0.3)
    async with env.broker.consume(qa.name) as consumer:
        assert len(await drain(consumer, 3)) == 3


async def test_subscription_filter_selects_by_header(env):
    topic = env.name("orders")
    eu = env.queue("eu", Subscription(topic, {"region": ("eu",)}))
    everything = env.queue("all", topic)
    await env.declare(eu, everything)
    await env.broker.publish(
        topic,
        [
            Message(topic, b"1", headers={"region": "eu"}),
            Message(topic, b"2", headers={"region": "us"}),
            Message(topic, b"3"),
        ],
    )
    async with env.broker.consume(eu.name) as consumer:
        [d] = await drain(consumer, 1)
        assert d.message.body == b"1"
        assert await nothing_within(consumer, 0.3)
    async with env.broker.consume(everything.name) as consumer:
        assert len(await drain(consumer, 3)) == 3


async def test_ack_removes_the_message(env):
    topic = env.name("orders")
    q = env.queue("ack", topic)
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 2, ordering_key="k"))
    async with env.broker.consume(q.name) as consumer:
        await drain(consumer, 2)

    async def empty() -> bool:
        s = await env.broker.stats(q.name)
        return s.ready == 0 and s.in_flight in (0, None)

    await eventually(empty, what="queue to be empty after acks")
    async with env.broker.consume(q.name) as consumer:
        assert await nothing_within(consumer, 0.3)


async def test_retry_redelivers_after_the_delay_with_attempt_plus_one(env):
    topic = env.name("orders")
    q = env.queue("retry", topic, retry=env.policy(max_attempts=5))
    await env.declare(q)
    [sent] = _msgs(topic, 1)
    await env.broker.publish(topic, [sent])
    delay = max(env.features.min_delay, 1.0)
    async with env.broker.consume(q.name) as consumer:
        first = await next_delivery(consumer)
        assert first.attempt == 1
        await first.retry(delay)
        if env.features.manual_clock:
            assert await nothing_within(consumer, 0.05), "redelivered before its delay"
            await env.advance(delay)
        again = await next_delivery(consumer)
        assert again.message.id == sent.id and again.message.body == sent.body
        assert again.attempt == 2
        await again.ack()


async def test_exhausted_attempts_land_in_the_dlq_with_reason(env):
    topic = env.name("orders")
    q = env.queue("poison", topic, retry=env.policy(max_attempts=2))
    await env.declare(q)
    [sent] = _msgs(topic, 1, headers={"tenant": "acme"})
    await env.broker.publish(topic, [sent])
    async with env.broker.consume(q.name) as consumer:
        for attempt in (1, 2):
            d = await next_delivery(consumer)
            assert d.attempt == attempt
            await d.retry(env.features.min_delay)
            await env.advance(env.features.min_delay)
        assert await nothing_within(consumer, 0.3)

    async def dead() -> bool:
        return (await env.broker.stats(q.name)).dead_letters == 1

    await eventually(dead, what="the message to reach the DLQ")
    [letter] = await env.broker.browse(q.dead_letter_queue)
    assert letter.id == sent.id and letter.body == sent.body and letter.headers["tenant"] == "acme"
    assert letter.headers[h.DEAD_REASON] == h.DELIVERY_LIMIT_EXCEEDED


async def test_dead_letter_keeps_message_and_records_reason(env):
    topic = env.name("orders")
    q = env.queue("dead", topic)
    await env.declare(q)
    [sent] = _msgs(topic, 1, headers={"tenant": "acme"}, correlation_id="c-9")
    await env.broker.publish(topic, [sent])
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        try:
            raise ValueError("amount must be positive")
        except ValueError as exc:
            await d.dead_letter("invalid payload", exc)
    await eventually(lambda: _dlq_count(env, q.name, 1), what="the dead letter")
    [letter] = await env.broker.browse(q.dead_letter_queue)
    assert (letter.id, letter.body, letter.correlation_id) == (sent.id, sent.body, "c-9")
    assert letter.headers["tenant"] == "acme"
    assert letter.headers[h.DEAD_REASON] == "invalid payload"
    assert letter.headers[h.ERROR_TYPE] == "ValueError"
    assert letter.headers[h.ERROR_MESSAGE] == "amount must be positive"
    assert "raise ValueError" in letter.headers[h.TRACEBACK]
    assert letter.headers[h.ORIGIN_QUEUE] == q.name and letter.headers[h.ORIGIN_TOPIC] == topic
    assert int(letter.headers[h.ATTEMPTS]) == 1


async def _dlq_count(env, queue: str, n: int) -> bool:
    return (await env.broker.stats(queue)).dead_letters == n


async def test_unsettled_message_of_a_closed_consumer_comes_back(env):
    topic = env.name("orders")
    q = env.queue("crash", topic)
    await env.declare(q)
    [sent] = _msgs(topic, 1)
    await env.broker.publish(topic, [sent])
    crashed = env.broker.consume(q.name)
    held = await next_delivery(crashed)
    await crashed.close()  # the consumer dies holding the message
    async with env.broker.consume(q.name) as consumer:
        again = await next_delivery(consumer)
        assert again.message.id == sent.id
        assert again.attempt >= 1
        await again.ack()
    assert held.message.id == sent.id


async def test_consumer_cancelled_mid_stream_loses_nothing(env):
    topic = env.name("orders")
    q = env.queue("cancel", topic)
    await env.declare(q)
    sent = _msgs(topic, 40)
    await env.broker.publish(topic, sent)
    seen: set[str] = set()
    five = asyncio.Event()

    async def consume_forever():
        async with env.broker.consume(q.name, prefetch=5) as consumer:
            async for d in consumer:
                seen.add(d.message.id)
                if len(seen) < 5:
                    await d.ack()
                else:
                    five.set()  # the fifth stays unsettled when we are cancelled
                    await asyncio.Event().wait()

    task = asyncio.create_task(consume_forever())
    await asyncio.wait_for(five.wait(), 15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with env.broker.consume(q.name, prefetch=5) as consumer:
        rest = await drain(consumer, 36)
    assert {d.message.id for d in rest} | seen == {m.id for m in sent}


async def test_competing_consumers_share_the_queue_without_loss(env):
    topic = env.name("orders")
    q = env.queue("compete", topic)
    await env.declare(q)
    sent = [Message(topic, b"x", ordering_key=f"k{i % 8}") for i in range(60)]
    await env.broker.publish(topic, sent)
    got: list[str] = []
    done = asyncio.Event()

    async def worker():
        async with env.broker.consume(q.name, prefetch=4) as consumer:
            async for d in consumer:
                got.append(d.message.id)
                await d.ack()
                if len(set(got)) >= len(sent):
                    done.set()
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(worker()) for _ in range(3)]
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert set(got) == {m.id for m in sent}


async def test_parallel_publishes_lose_nothing(env):
    topic = env.name("orders")
    q = env.queue("parallel", topic)
    await env.declare(q)
    batches = [[Message(topic, b"p", ordering_key=f"k{b}") for _ in range(10)] for b in range(8)]
    await asyncio.gather(*(env.broker.publish(topic, batch) for batch in batches))
    async with env.broker.consume(q.name, prefetch=20) as consumer:
        got = await drain(consumer, 80)
    assert {d.message.id for d in got} == {m.id for b in batches for m in b}


async def test_order_is_kept_per_ordering_key(env):
    topic = env.name("orders")
    q = env.queue("ordered", topic, ordered=True)
    await env.declare(q)
    sent = [Message(topic, f"{key}:{i}".encode(), ordering_key=key) for i in range(10) for key in ("a", "b", "c")]
    for m in sent:  # one at a time: the publisher's order is the order to keep
        await env.broker.publish(topic, [m])
    async with env.broker.consume(q.name, prefetch=10) as consumer:
        got = await drain(consumer, 30)
    for key in ("a", "b", "c"):
        bodies = [d.message.body.decode() for d in got if d.message.ordering_key == key]
        assert bodies == [f"{key}:{i}" for i in range(10)]


async def test_retry_on_an_ordered_queue_holds_back_its_key(env):
    topic = env.name("orders")
    q = env.queue("ordretry", topic, ordered=True, retry=env.policy(max_attempts=5))
    await env.declare(q)
    for i in range(3):
        await env.broker.publish(topic, [Message(topic, f"a:{i}".encode(), ordering_key="a")])
    async with env.broker.consume(q.name, prefetch=10) as consumer:
        first = await next_delivery(consumer)
        assert first.message.body == b"a:0"
        await first.retry(max(env.features.min_delay, 1.0))
        await env.advance(max(env.features.min_delay, 1.0))
        got = await drain(consumer, 3)
    assert [d.message.body for d in got] == [b"a:0", b"a:1", b"a:2"]


async def test_prefetch_bounds_unsettled_deliveries(env):
    topic = env.name("orders")
    q = env.queue("prefetch", topic)
    await env.declare(q)
    await env.broker.publish(topic, [Message(topic, b"x", ordering_key=f"k{i}") for i in range(6)])
    async with env.broker.consume(q.name, prefetch=3) as consumer:
        held = [await next_delivery(consumer) for _ in range(3)]
        assert await nothing_within(consumer, 0.3), "a fourth delivery while three were unsettled"
        await held[0].ack()
        fourth = await next_delivery(consumer)
        for d in [*held[1:], fourth]:
            await d.ack()


async def test_browse_does_not_consume_and_purge_empties(env):
    topic = env.name("orders")
    q = env.queue("browse", topic)
    await env.declare(q)
    sent = _msgs(topic, 4, ordering_key="k")
    await env.broker.publish(topic, sent)

    async def four_ready() -> bool:
        return (await env.broker.stats(q.name)).ready == 4

    await eventually(four_ready, what="4 ready messages")
    seen = await env.broker.browse(q.name, limit=10)
    assert [m.id for m in seen] == [m.id for m in sent]
    assert len(await env.broker.browse(q.name, limit=2)) == 2
    # (a quorum queue takes browsed messages back a moment after the browse returns)
    await eventually(four_ready, what="the browsed messages ready again")
    assert await env.broker.purge(q.name) == 4
    assert (await env.broker.stats(q.name)).ready == 0


async def test_send_goes_straight_to_one_queue(env):
    topic = env.name("orders")
    one, other = env.queue("direct", topic), env.queue("other", topic)
    await env.declare(one, other)
    [m] = _msgs(topic, 1)
    await env.broker.send(one.name, [m])
    async with env.broker.consume(one.name) as consumer:
        [d] = await drain(consumer, 1)
        assert d.message.id == m.id
    async with env.broker.consume(other.name) as consumer:
        assert await nothing_within(consumer, 0.3)


async def test_a_delivery_settles_exactly_once(env):
    topic = env.name("orders")
    q = env.queue("once", topic)
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 1))
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        await d.ack()
        with pytest.raises(AlreadySettled):
            await d.retry(0)
        with pytest.raises(AlreadySettled):
            await d.dead_letter("late")


async def test_declaring_twice_is_a_no_op(env):
    topic = env.name("orders")
    q = env.queue("twice", topic)
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 1))
    await env.declare(q)
    async with env.broker.consume(q.name) as consumer:
        assert len(await drain(consumer, 1)) == 1


async def test_publishing_to_an_undeclared_topic_fails(env):
    with pytest.raises(UnknownTopic):
        await env.broker.publish(env.name("nowhere"), _msgs(env.name("nowhere"), 1))


async def test_publish_after_close_fails_loudly(env):
    topic = env.name("orders")
    await env.declare(env.queue("closed", topic))
    await env.broker.close()
    with pytest.raises(BrokerClosed):
        await env.broker.publish(topic, _msgs(topic, 1))


async def test_remove_deletes_what_declare_created(env):
    # Given a queue with a retry policy and a dead letter, fed by a topic
    topic = env.name("removed")
    q = env.queue("removed", topic, retry=env.policy())
    topology = await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 2))
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        await d.dead_letter("for the dead-letter queue")
    before = await env.broker.queue_names()
    # When the topology is removed (twice: the second finds nothing, and that is fine)
    await env.broker.remove(topology)
    await env.broker.remove(topology)
    # Then its queues, dead-letter queue included, and its topic are gone
    with pytest.raises(UnknownQueue):
        await env.broker.stats(q.name)
    with pytest.raises(UnknownQueue):
        await env.broker.browse(q.dead_letter_queue)
    with pytest.raises(UnknownTopic):
        await env.broker.publish(topic, _msgs(topic, 1))
    after = await env.broker.queue_names()
    if before is not None:  # a broker that can list its queues lists them no more
        assert {q.name, q.dead_letter_queue} <= set(before)
        assert not {q.name, q.dead_letter_queue} & set(after or [])


@pytest.mark.parametrize("closing", ["consumer", "broker"])
@pytest.mark.parametrize("after_ms", [0, 1, 10, 50])
async def test_a_consumer_closed_at_any_moment_ends_cleanly(env, closing, after_ms):
    # Given a consumer whose first __anext__ is under way (opening, polling or handing out)
    topic = env.name("orders")
    q = env.queue("closing", topic)
    await env.declare(q)
    sent = _msgs(topic, 3)
    await env.broker.publish(topic, sent)
    consumer = env.broker.consume(q.name, prefetch=5)
    first = asyncio.ensure_future(consumer.__anext__())
    # When the consumer (or the whole broker) is closed that many milliseconds later:
    # the moment is what is under test, not a wait for something to happen
    await asyncio.sleep(after_ms / 1000)
    await (consumer.close() if closing == "consumer" else env.broker.close())
    # Then the pending call ends with a delivery or the end of the stream, nothing else
    try:
        got = await asyncio.wait_for(first, 30)
    except StopAsyncIteration:
        got = None
    assert got is None or got.message.id in {m.id for m in sent}
    if closing == "consumer":
        # and what it took comes back: nothing is lost
        async with env.broker.consume(q.name, prefetch=5) as again:
            rest = await drain(again, 3)
        assert {d.message.id for d in rest} == {m.id for m in sent}
