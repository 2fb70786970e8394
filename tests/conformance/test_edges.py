"""The edges every broker must treat alike (DESIGN.md, "The edges too"): a publish no
queue takes, a settlement that fails, messages from plain clients, retry timing within
a documented bound, FIFO postpones, dead letters that always carry their reason."""

import logging

import pytest

from mailbag.broker import Message, Subscription, Unroutable
from tests.conformance.env import drain, nothing_within


def _msgs(topic: str, n: int, **kw) -> list[Message]:
    return [Message(topic=topic, body=b'{"n": %d}' % i, **kw) for i in range(n)]


# -- a publish no queue takes ------------------------------------------------------


async def test_a_publish_no_queue_takes_succeeds_is_counted_and_warned_once(env, caplog):
    # Given a declared topic no queue subscribes to
    topic = env.name("nobody")
    await env.declare(topics=(topic,))
    # When it is published to three times
    with caplog.at_level(logging.WARNING, logger="mailbag.broker"):
        for _ in range(3):
            await env.broker.publish(topic, _msgs(topic, 2))
    # Then every call succeeds, all six are counted, and one warning names the topic
    assert env.broker.unrouted.counts[topic] == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and topic in r.getMessage()]
    assert len(warnings) == 1


async def test_a_mandatory_publish_no_queue_takes_raises_unroutable_naming_the_topic(env):
    topic = env.name("nobody")
    await env.declare(topics=(topic,))
    sent = _msgs(topic, 2)
    with pytest.raises(Unroutable, match=topic) as raised:
        await env.broker.publish(topic, sent, mandatory=True)
    assert raised.value.topic == topic and sorted(raised.value.message_ids) == sorted(m.id for m in sent)
    assert env.broker.unrouted.counts[topic] == 0


async def test_a_mandatory_publish_delivers_what_a_filter_takes_and_names_the_rest(env):
    # Given a queue that takes only region=eu
    topic = env.name("orders")
    eu = env.queue("eu", Subscription(topic, {"region": ("eu",)}))
    await env.declare(eu)
    taken = Message(topic, b'{"n": 1}', headers={"region": "eu"}, ordering_key="k")
    missed = Message(topic, b'{"n": 2}', headers={"region": "us"}, ordering_key="k")
    # When both are published with mandatory
    with pytest.raises(Unroutable) as raised:
        await env.broker.publish(topic, [taken, missed], mandatory=True)
    # Then the one no filter takes is named, and the other arrives
    assert raised.value.message_ids == [missed.id]
    async with env.broker.consume(eu.name) as consumer:
        [got] = await drain(consumer, 1)
        assert got.message.id == taken.id
        assert await nothing_within(consumer, 0.3)


async def test_a_publish_a_queue_takes_is_not_counted_as_unrouted(env):
    topic = env.name("orders")
    q = env.queue("taker", topic)
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 3, ordering_key="k"), mandatory=True)
    assert env.broker.unrouted.counts[topic] == 0
    async with env.broker.consume(q.name) as consumer:
        assert len(await drain(consumer, 3)) == 3
