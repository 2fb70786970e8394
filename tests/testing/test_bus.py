"""`TestBus`: what became of each message, follow-ups and dead letters, on memory://
in virtual time (retry delays, circuit resets, handler timeouts, saga step timeouts
take no wall time), on SQS in moto and on the test RabbitMQ."""

from __future__ import annotations

import asyncio

import boto3
import pytest
from pydantic import BaseModel

from mailbag import App, Context, RetryPolicy
from mailbag.broker.breaker import BreakerPolicy
from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from mailbag.testing import NotSettled, TestBus
from mailbag.workers.middleware.timeout import HandlerTimeout
from mailbag.workers.saga import Saga, SagaFinished, Step, reply
from tests.moto_server import REGION, dummy_aws_credentials
from tests.rabbitmq.service import amqp_url

#: every broker the same test body runs on: (URL, a backoff that keeps it quick there)
BROKERS = {
    "memory": ("memory://", 60.0),
    "sqs-moto": ("sqs://?region=eu-west-1", 60.0),
    "rabbitmq": (None, 0.2),  # time is real on RabbitMQ
}


@pytest.fixture(params=list(BROKERS))
def where(request) -> tuple[str, float]:
    url, backoff = BROKERS[request.param]
    return url or amqp_url(), backoff


class Order(BaseModel):
    order_id: str


def virtual_seconds(bus: TestBus, since: float) -> float:
    assert bus.clock is not None
    return bus.clock.now() - since


async def test_a_retry_that_never_succeeds_ends_in_the_dead_letter_queue_with_why(mailbag_bus, where):
    # Given a handler whose dependency is always down, three attempts with backoff
    url, backoff = where
    app = App("shop")

    @app.handler("orders.placed", model=Order, retry=RetryPolicy(max_attempts=3, initial_delay=backoff))
    async def reserve(order: Order) -> None:
        raise ConnectionError(f"inventory down for {order.order_id}")

    async with mailbag_bus(app, broker=url) as bus:
        # When an order is placed
        message_id = await bus.publish("orders.placed", Order(order_id="o-1"))
        await bus.settle(timeout=20)

        # Then it is dead-lettered after its third attempt, with the handler's error
        outcome = bus.outcome(message_id)
        assert (outcome.status, outcome.attempts, outcome.runs) == ("dead_lettered", 3, 3)
        assert outcome.reason is not None and "failed after 3 attempt(s)" in outcome.reason
        assert isinstance(outcome.error, ConnectionError)
        [dead] = await bus.dead_letters("shop.reserve")
        assert dead.id == message_id and dead.attempts == 3 and dead.error_type == "ConnectionError"
        assert dead.source_queue == "shop.reserve"


async def test_a_duplicate_is_not_handled_twice_and_follow_ups_are_recorded_in_order(mailbag_bus, where):
    # Given a handler that publishes a follow-up for each order, which another handles
    url, _ = where
    app = App("inventory")
    handled: list[str] = []
    audited: list[str] = []

    @app.handler("orders.placed", model=Order)
    async def reserve(order: Order, ctx: Context) -> None:
        handled.append(order.order_id)
        await ctx.publish("inventory.reserved", {"order_id": order.order_id}, key=order.order_id)

    @app.handler("inventory.reserved", model=Order)
    async def audit(event: Order) -> None:
        audited.append(event.order_id)

    async with mailbag_bus(app, broker=url) as bus:
        # When two orders are placed, one of them twice under the same message id
        first = await bus.publish("orders.placed", Order(order_id="o-1"))
        await bus.settle(timeout=20)
        again = await bus.publish("orders.placed", Order(order_id="o-1"), message_id=first)
        second = await bus.publish("orders.placed", Order(order_id="o-2"))
        await bus.settle(timeout=20)

        # Then the duplicate was acknowledged without running the handler again
        assert again == first
        assert sorted(handled) == ["o-1", "o-2"]
        assert bus.outcome(first).status == "handled" and bus.outcome(first).runs == 1
        assert bus.outcome(second).status == "handled"
        # and the follow-ups carry their cause
        follow_ups = bus.published("inventory.reserved")
        assert sorted(m.ordering_key or "" for m in follow_ups) == ["o-1", "o-2"]
        assert {m.causation_id for m in follow_ups} == {first, second}
        assert sorted(audited) == ["o-1", "o-2"]
        assert all(bus.outcome(m.id).status == "handled" for m in follow_ups)
        assert await bus.dead_letters("inventory.reserve") == []


async def test_an_invalid_payload_is_dead_lettered_without_running_the_handler(mailbag_bus):
    app = App("shop")

    @app.handler("orders.placed", model=Order)
    async def reserve(order: Order) -> None: ...

    async with mailbag_bus(app) as bus:
        message_id = await bus.publish("orders.placed", {"id": 7})
        await bus.settle()
        outcome = bus.outcome(message_id)
    assert (outcome.status, outcome.runs) == ("dead_lettered", 0)
    assert outcome.reason is not None and "order_id" in outcome.reason


async def test_an_hour_of_backoff_takes_no_wall_time_on_memory():
    # Given a handler that succeeds on its fourth attempt, with an hour between attempts
    app = App("shop")
    attempts: list[int] = []

    @app.handler("orders.placed", retry=RetryPolicy(max_attempts=5, initial_delay=3600, multiplier=1))
    async def reserve(order: dict, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 4:
            raise ConnectionError("not yet")

    async with TestBus(app, concurrency=2) as bus:
        assert bus.clock is not None
        begin = bus.clock.now()
        message_id = await bus.publish("orders.placed", {"n": 1})
        await bus.settle()
        # Then it is handled on attempt 4, the virtual clock moved, the wall clock hardly
        assert bus.outcome(message_id).attempts == 4 and attempts == [1, 2, 3, 4]
        assert 0 < virtual_seconds(bus, begin) <= 3 * 3600


async def test_a_handler_timeout_fires_in_virtual_time():
    # Given a handler that hangs, with a 30 s budget and two attempts
    app = App("shop")
    never = asyncio.Event()

    @app.handler("orders.placed", timeout=30, retry=RetryPolicy(max_attempts=2, initial_delay=10))
    async def reserve(order: dict) -> None:
        await never.wait()

    async with TestBus(app) as bus:
        assert bus.clock is not None
        begin = bus.clock.now()
        message_id = await bus.publish("orders.placed", {"n": 1})
        await bus.settle(timeout=10)
        # Then each attempt was cut at 30 virtual seconds, and the message dead-lettered
        outcome = bus.outcome(message_id)
        assert (outcome.status, outcome.runs) == ("dead_lettered", 2)
        assert isinstance(outcome.error, HandlerTimeout)
        assert 60 <= virtual_seconds(bus, begin) <= 70


async def test_an_open_circuit_postpones_without_using_attempts_until_it_resets():
    # Given a dependency that fails once, behind a breaker that opens on one failure
    # and stays open for two minutes
    app = App("shop", breakers={"payments": BreakerPolicy(failures=1, reset_after=120)})
    calls: list[tuple[str, int]] = []

    @app.handler("orders.placed", model=Order, breaker="payments", retry=RetryPolicy(max_attempts=3, initial_delay=1))
    async def charge(order: Order, ctx: Context) -> None:
        calls.append((order.order_id, ctx.attempt))
        if len(calls) == 1:
            raise ConnectionError("payments down")

    async with TestBus(app, concurrency=1) as bus:
        assert bus.clock is not None
        begin = bus.clock.now()
        # When two orders come while the circuit opens
        first = await bus.publish("orders.placed", Order(order_id="o-1"))
        second = await bus.publish("orders.placed", Order(order_id="o-2"))
        await bus.settle(timeout=10)

        # Then both are handled once the circuit let calls through again: the second
        # was never tried while it was open, so it used one attempt
        assert bus.outcome(first).status == bus.outcome(second).status == "handled"
        assert bus.outcome(second).attempts == 1
        assert ("o-2", 1) in calls and len(calls) == 3
        assert virtual_seconds(bus, begin) >= 120


class Reserve(BaseModel):
    order_id: str


class Reserved(BaseModel):
    order_id: str


class Released(BaseModel):
    order_id: str


class Charged(BaseModel):
    order_id: str


async def test_a_saga_step_that_never_answers_is_compensated_after_its_timeout():
    # Given a saga whose payment participant never answers within its 5 minutes
    saga = Saga(
        "checkout",
        steps=(
            Step("reserve", "inventory.reserve", Reserved, "inventory.release", Released),
            Step("charge", "payment.charge", Charged, timeout=300),
        ),
    )
    app = App("participants", topics=(saga.reply_topic,))
    released: list[str] = []

    @app.handler("inventory.reserve", queue="inventory", model=Reserve)
    async def reserve(order: Reserve, ctx: Context) -> None:
        await reply(ctx, Reserved(order_id=order.order_id))

    @app.handler("inventory.release", queue="inventory", model=Reserve)
    async def release(order: Reserve, ctx: Context) -> None:
        released.append(order.order_id)
        await reply(ctx, Released(order_id=order.order_id))

    @app.handler("payment.charge", queue="payment", model=Reserve)
    async def charge(order: Reserve, ctx: Context) -> None:
        pass  # lost: no reply

    async with TestBus(app) as bus:
        orchestrator = await bus.orchestrator(saga)
        # When a saga begins and everything settles
        await orchestrator.begin("o-1", {"order_id": "o-1"})
        await bus.settle(timeout=10)

        # Then the charge timed out and the reservation was released
        [finished] = bus.published(saga.finished_topic)
        outcome = SagaFinished.model_validate_json(finished.body)
        assert outcome.status == "compensated" and "charge timed out" in (outcome.reason or "")
        assert released == ["o-1"]


async def test_settle_names_what_is_still_pending_when_it_runs_out_of_time():
    app = App("shop")
    never = asyncio.Event()

    @app.handler("orders.placed")
    async def stuck(order: dict) -> None:
        await never.wait()

    async with TestBus(app) as bus:
        message_id = await bus.publish("orders.placed", {"n": 1})
        with pytest.raises(NotSettled, match=f"{message_id} on shop.stuck"):
            await bus.settle(timeout=0.3)
        assert bus.outcome(message_id).status == "pending"
        never.set()
        await bus.settle()
        assert bus.outcome(message_id).status == "handled"


async def test_a_bus_on_a_broker_the_test_opened_shares_its_clock():
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    app = App("shop")

    @app.handler("orders.placed", retry=RetryPolicy(max_attempts=2, initial_delay=600))
    async def reserve(order: dict, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("once")

    async with TestBus(app, broker) as bus:
        message_id = await bus.publish("orders.placed", {"n": 1})
        await bus.settle()
        assert bus.clock is clock and bus.outcome(message_id).attempts == 2
    await broker.close()


async def test_outcome_asks_which_queue_when_a_message_went_to_several():
    app = App("shop")

    @app.handler("orders.placed", queue="billing")
    async def bill(order: dict) -> None: ...

    @app.handler("orders.placed", queue="shipping")
    async def ship(order: dict) -> None: ...

    async with TestBus(app) as bus:
        message_id = await bus.publish("orders.placed", {"n": 1})
        await bus.settle()
        with pytest.raises(ValueError, match="billing, shipping"):
            bus.outcome(message_id)
        assert bus.outcome(message_id, "shipping").status == "handled"
        with pytest.raises(KeyError):
            bus.outcome("no-such-id")


def _names(endpoint: str) -> set[str]:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    sns = boto3.client("sns", region_name=REGION, endpoint_url=endpoint)
    queues = set(sqs.list_queues().get("QueueUrls", []))
    return queues | {t["TopicArn"] for t in sns.list_topics()["Topics"]}


async def test_on_a_shared_sqs_endpoint_a_bus_uses_names_of_its_own_and_deletes_them(mailbag_bus, moto_server):
    # Given SNS/SQS over HTTP (moto_server), where time is real, and what is there already
    app = App("shop")

    @app.handler("orders.placed", retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def reserve(order: dict, ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("once")

    with dummy_aws_credentials():
        before = _names(moto_server)
        async with mailbag_bus(app, broker=f"sqs://?region={REGION}&endpoint={moto_server}") as bus:
            # When a message is retried once, and the bus closes
            message_id = await bus.publish("orders.placed", {"n": 1})
            await bus.settle(timeout=30)
            assert bus.outcome(message_id).attempts == 2
            during = _names(moto_server)
        # Then its topics and queues were its own, and are gone
        assert any("t" in n and "shop_reserve" in n for n in during - before)
        assert _names(moto_server) == before


async def test_a_bus_on_a_node_list_url_runs_the_app_on_the_node_that_answers(mailbag_bus):
    # Given the README's cluster URL: a node nothing listens on, then the test RabbitMQ
    url = amqp_url().replace("127.0.0.1:5672", "127.0.0.1:1,127.0.0.1:5672")
    app = App("shop")
    seen: list[str] = []

    @app.handler("orders.placed", model=Order)
    async def reserve(order: Order) -> None:
        seen.append(order.order_id)

    async with mailbag_bus(app, broker=url) as bus:
        # When an order is placed, Then it is handled there
        message_id = await bus.publish("orders.placed", Order(order_id="o-1"))
        await bus.settle(timeout=20)
        assert bus.outcome(message_id).status == "handled" and seen == ["o-1"]
