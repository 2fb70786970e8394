"""The publisher: confirmed publishes, typed refusals, retries within a deadline, the
circuit breaker and request deduplication, on every broker in `LINKS`."""

import asyncio

import pytest
from pydantic import BaseModel

from mailbag.broker import BrokerClosed
from mailbag.broker.memory import MemoryBroker
from mailbag.publishers import (
    BreakerPolicy,
    CircuitBreaker,
    CircuitOpen,
    PayloadRejected,
    Publisher,
    PublishError,
    PublisherSettings,
)
from mailbag.workers import App
from tests.conformance.env import drain, eventually, nothing_within
from tests.publishers.faults import Cuttable

FAST = PublisherSettings(deadline=5.0, attempt_timeout=2.0, initial_backoff=0.02, max_backoff=0.2)


class OrderPlaced(BaseModel):
    order_id: str
    amount_cents: int


async def test_publish_returns_the_id_once_confirmed_and_the_message_keeps_its_fields(link):
    topic = link.name("orders")
    queue = await link.queue(topic)
    publisher = Publisher(link.broker, settings=FAST)

    message_id = await publisher.publish(
        topic,
        OrderPlaced(order_id="o-1", amount_cents=250),
        key="o-1",
        headers={"tenant": "acme"},
        correlation_id="corr-1",
    )
    many = await publisher.publish_many(topic, [{"n": 1}, {"n": 2}, b"raw"])

    async with link.observer.consume(queue.name) as consumer:
        got = [d.message for d in await drain(consumer, 4)]
    first = next(m for m in got if m.id == message_id)
    assert first.body == b'{"order_id":"o-1","amount_cents":250}'
    assert (first.type, first.ordering_key, first.correlation_id) == ("OrderPlaced", "o-1", "corr-1")
    assert first.headers["tenant"] == "acme"
    assert sorted(m.id for m in got) == sorted([message_id, *many])
    assert next(m for m in got if m.id == many[2]).body == b"raw"


async def test_a_payload_that_does_not_match_the_topic_model_is_refused_before_sending():
    # Given a publisher that learnt the topic's model from an app's handler
    inner = MemoryBroker()
    broker = Cuttable(inner)
    app = App("shop")

    @app.handler("orders.placed", model=OrderPlaced)
    async def handle(order: OrderPlaced) -> None: ...

    publisher = Publisher(broker, app=app, settings=FAST)

    # When payloads that do not validate are published, alone or in a batch with good ones
    with pytest.raises(PayloadRejected, match="amount_cents"):
        await publisher.publish("orders.placed", {"order_id": "o-1", "amount_cents": "lots"})
    with pytest.raises(PayloadRejected):
        await publisher.publish_many("orders.placed", [{"order_id": "o-2", "amount_cents": 1}, {"order_id": "o-3"}])

    # Then nothing reached the broker; a valid dict is accepted and typed by the model
    assert broker.publish_calls == 0
    await publisher.publish("orders.placed", {"order_id": "o-4", "amount_cents": 1})
    assert broker.publish_calls == 1


async def test_a_transient_fault_is_retried_until_the_broker_confirms(link):
    # Given a broker that becomes unreachable
    topic = link.name("orders")
    queue = await link.queue(topic)
    publisher = Publisher(link.broker, settings=FAST)
    await publisher.publish(topic, {"n": 0})
    link.cut()

    # When a publish starts while it is down and the link comes back during its deadline
    pending = asyncio.create_task(publisher.publish(topic, {"n": 1}))
    await eventually(_failed_once(publisher), what="a failed attempt")
    link.restore()
    message_id = await asyncio.wait_for(pending, 10)

    # Then the call returned once confirmed, and the message is there
    async with link.observer.consume(queue.name) as consumer:
        ids = [d.message.id for d in await drain(consumer, 2)]
    assert message_id in ids


async def test_past_the_deadline_the_error_names_the_messages_that_did_not_go_out(link):
    topic = link.name("orders")
    await link.queue(topic)
    publisher = Publisher(
        link.broker, settings=PublisherSettings(deadline=0.3, attempt_timeout=0.5, initial_backoff=0.02)
    )
    await publisher.publish(topic, {"warm": True})
    link.cut()

    with pytest.raises(PublishError) as caught:
        await publisher.publish_many(topic, [{"n": 1}, {"n": 2}])

    # each message either never got out or may have (sent on a connection that dropped)
    error = caught.value
    assert sorted(error.failed + error.unknown) == sorted(error.unconfirmed) and len(error.unconfirmed) == 2
    assert error.sent == [] and all(i in str(error) for i in error.unconfirmed)
    assert caught.value.__cause__ is not None


async def test_the_circuit_opens_fails_fast_while_down_and_closes_after_a_good_trial(link):
    # Given a breaker that opens after two faults and tries again after 0.2s
    topic = link.name("orders")
    await link.queue(topic)
    settings = PublisherSettings(
        deadline=2.0,
        attempt_timeout=1.0,
        initial_backoff=0.01,
        max_backoff=0.02,
        breaker=BreakerPolicy(failures=2, reset_after=0.2),
    )
    publisher = Publisher(link.broker, settings=settings)
    await publisher.publish(topic, {"warm": True})
    link.cut()

    # When publishing while the broker is down
    with pytest.raises(PublishError):
        await publisher.publish(topic, {"n": 1})
    # Then the next call fails at once without waiting out its deadline
    with pytest.raises(CircuitOpen) as caught:
        await publisher.publish(topic, {"n": 2})
    assert 0 < caught.value.retry_after <= 0.2 and publisher.breaker.state == "open"

    # When the broker is back, a trial publish after the reset timeout closes the circuit
    link.restore()
    await eventually(_publishes(publisher, topic), timeout=15, what="a publish through the closed circuit")
    assert publisher.breaker.state == "closed"


async def test_concurrent_publishes_of_one_message_id_are_sent_once(link):
    # Given a broker that is briefly down, so publishes overlap
    topic = link.name("orders")
    queue = await link.queue(topic)
    publisher = Publisher(link.broker, settings=FAST)
    await publisher.publish(topic, {"warm": True}, message_id="warm")
    link.cut()

    # When three tasks publish the same id at the same time, one of them twice in a batch
    a = asyncio.create_task(publisher.publish(topic, {"n": 1}, message_id="same-id"))
    await eventually(_failed_once(publisher), what="a failed attempt")
    b = asyncio.create_task(publisher.publish(topic, {"n": 1}, message_id="same-id"))
    c = asyncio.create_task(publisher.send([publisher.models.message(topic, {"n": 1}, message_id="same-id")] * 2))
    await asyncio.sleep(0)  # let b and c join before the link is back
    link.restore()

    # Then all three return the id, and the broker received it once
    assert await asyncio.wait_for(asyncio.gather(a, b, c), 10) == ["same-id", "same-id", ["same-id", "same-id"]]
    async with link.observer.consume(queue.name) as consumer:
        got = [d.message.id for d in await drain(consumer, 2)]
        assert sorted(got) == ["same-id", "warm"]
        assert await nothing_within(consumer, 0.5)


async def test_a_closed_broker_is_not_retried():
    broker = Cuttable(MemoryBroker())
    publisher = Publisher(broker, settings=FAST)
    await publisher.publish("t", {"warm": True})
    await broker.close()

    with pytest.raises(PublishError) as caught:
        await publisher.publish("t", {"n": 1})

    assert isinstance(caught.value.__cause__, BrokerClosed)
    assert broker.publish_calls == 2
    assert publisher.breaker.failures == 0


def test_the_breaker_half_opens_for_one_trial_at_a_time():
    now = [0.0]
    breaker = CircuitBreaker(BreakerPolicy(failures=2, reset_after=10), clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow() and breaker.state == "closed"
    breaker.failed()
    assert not breaker.allow() and breaker.retry_after() == 10
    now[0] = 10
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # others wait for it
    breaker.failed()
    assert breaker.state == "open" and breaker.retry_after() == 10
    now[0] = 20
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.allow()


def _failed_once(publisher: Publisher):
    async def check() -> bool:
        return publisher.breaker.failures >= 1

    return check


def _publishes(publisher: Publisher, topic: str):
    async def check() -> bool:
        try:
            await publisher.publish(topic, {"after": "restore"})
        except PublishError:
            return False
        return True

    return check
