"""A handler's follow-up is built like any published message: headers in mailbag's
reserved `x-mailbag-*` namespace are refused, so a follow-up can never arrive with a
forged attempt number (on RabbitMQ `x-mailbag-attempt` is what the consumer reads)."""

from __future__ import annotations

import pytest

from mailbag import App, Context
from mailbag.broker.errors import MailbagError, ReservedHeader
from mailbag.testing import TestBus
from mailbag.workers.context import follow_up_id
from mailbag.workers.metrics import Metrics
from tests.rabbitmq.service import amqp_url


@pytest.fixture(params=["memory", "rabbitmq"])
def bus_on(request, mailbag_bus):
    url = "memory://" if request.param == "memory" else amqp_url()
    return lambda app: mailbag_bus(app, broker=url)


FORGED = [
    {"headers": {"x-mailbag-attempt": 7}},
    {"headers": {"X-Mailbag-Attempt": 7}},
    {"stamp": {"x-mailbag-attempt": 7}},
]


async def test_a_follow_up_never_arrives_with_a_forged_attempt(bus_on):
    # Given a handler that tries to send its follow-up with attempt 7, then sends it plainly
    app = App("shop")
    refused: list[BaseException] = []
    audited: list[tuple[int, dict]] = []

    @app.handler("orders.placed")
    async def place(payload: dict, ctx: Context) -> None:
        for forged in FORGED:
            try:
                await ctx.publish("orders.audit", payload, **forged)
            except ReservedHeader as exc:
                refused.append(exc)
        await ctx.publish("orders.audit", payload)

    @app.handler("orders.audit")
    async def audit(payload: dict, ctx: Context) -> None:
        audited.append((ctx.attempt, dict(ctx.message.headers)))

    async with bus_on(app) as bus:
        # When an order is placed
        await bus.publish("orders.placed", {"order_id": "o-1"})
        await bus.settle(timeout=20)
        # Then every forged try was refused, one-line and under MailbagError
        assert len(refused) == len(FORGED)
        assert all(isinstance(e, MailbagError) and "x-mailbag-attempt" in str(e).lower() for e in refused)
        # And the one follow-up that went out arrived as a first attempt, with no header of ours
        [(attempt, headers)] = audited
        assert attempt == 1
        assert not [k for k in headers if k.lower().startswith("x-mailbag-")]
        assert len(bus.published("orders.audit")) == 1


async def test_a_refused_follow_up_does_not_use_up_a_position(bus_on):
    # Given a handler whose first try at a follow-up is refused
    app = App("shop")
    ids: list[str] = []
    first: list[str] = []

    @app.handler("orders.placed")
    async def place(payload: dict, ctx: Context) -> None:
        with pytest.raises(ReservedHeader):
            ctx.follow_up("orders.audit", payload, headers={"x-mailbag-dead-reason": "forged"})
        ids.append(ctx.follow_up("orders.audit", payload).id)
        first.append(follow_up_id(ctx.message_id, f"{ctx.queue}/{ctx.handler.name}", 1))

    async with bus_on(app) as bus:
        # When it runs
        await bus.publish("orders.placed", {"order_id": "o-1"})
        await bus.settle(timeout=20)
    # Then the follow-up it did build has the id of the first position
    assert ids == first and len(ids) == 1


async def test_a_test_bus_workers_unrouted_metric_reads_what_the_broker_dropped():
    # Given a handler that publishes to a topic no queue takes, and a worker with metrics
    app = App("shop", topics=("nobody.listens",))

    @app.handler("orders.placed")
    async def place(payload: dict, ctx: Context) -> None:
        await ctx.publish("nobody.listens", payload)

    metrics = Metrics()
    async with TestBus(app, metrics=metrics) as bus:
        # When two orders are handled and the worker's metrics poll its broker
        for n in range(2):
            await bus.publish("orders.placed", {"order_id": f"o-{n}"})
        await bus.settle()
        await metrics.poll_once(bus.broker, [])
    # Then the metric reads the broker's count, not a wrapper's own zero
    assert metrics.registry.get_sample_value("mailbag_unroutable_published", {"topic": "nobody.listens"}) == 2
