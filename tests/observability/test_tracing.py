"""Tracing: trace context rides in message headers on every broker (AMQP headers,
SNS/SQS attributes), the consumer's `process` span continues the publisher's trace,
retries and dead letters show on it, the outbox relay keeps the trace an event was
written in, a whole saga is one trace, and without OpenTelemetry nothing changes.

Spans are read from the SDK's in-memory exporter, installed as the global provider for
one test at a time."""

from __future__ import annotations

import asyncio
import importlib
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel

from mailbag.broker import Broker, Message, RetryPolicy, connect, tracing
from mailbag.broker.memory import MemoryBroker
from mailbag.broker.sqs import marshal as wire
from mailbag.examples.orders.choreography import build_app, place_order
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Payments, Shop, sample_orders
from mailbag.examples.orders.timeline import Timeline
from mailbag.publishers import Publisher
from mailbag.publishers.outbox import Relay, SqliteOutbox
from mailbag.workers import App, Context, Postpone, Worker, WorkerSettings
from mailbag.workers.middleware import chain
from mailbag.workers.middleware.tracing import Tracing
from mailbag.workers.saga import Orchestrator
from mailbag.workers.saga.store import open_store
from tests.conformance.env import eventually
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared

BACKENDS = ["memory", "rabbitmq", "sqs"]
SYSTEMS = {
    "memory": ("mailbag.memory", "mailbag.memory"),
    "rabbitmq": ("rabbitmq", "rabbitmq"),
    "sqs": ("aws.sns", "aws_sqs"),
}
#: the shortest retry delay each broker honours (RabbitMQ TTL queues, SQS visibility in whole seconds)
RETRY_DELAYS = {"memory": 0.0, "rabbitmq": 0.2, "sqs": 1.0}
SETTINGS = WorkerSettings(idempotency_url="memory://", retry_jitter=False, grace_period=5)

#: a caller's trace, as an upstream service would hand it over (with vendor trace state)
UPSTREAM = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "shop=checkout"}
UPSTREAM_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736


class Order(BaseModel):
    sku: str


@pytest.fixture
def spans(monkeypatch) -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test. `set_tracer_provider` works once per process, so
    the test's SDK provider is swapped in as the global one and swapped out after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def without_opentelemetry() -> Iterator[None]:
    """`mailbag.broker.tracing` as loaded where OpenTelemetry is not installed."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "opentelemetry", None)
        importlib.reload(tracing)
        assert not tracing.ENABLED
        yield
    importlib.reload(tracing)


@asynccontextmanager
async def opened(backend: str) -> AsyncIterator[tuple[Broker, str]]:
    """A broker and a name prefix for this test; what the test declared is removed after."""
    prefix = f"{run_name('tr')}-"
    if backend == "memory":
        async with MemoryBroker() as broker:
            yield broker, prefix
    elif backend == "rabbitmq":
        broker = await connect(amqp_url())
        try:
            yield broker, prefix
        finally:
            await broker.close()
            await remove_declared(broker)
    else:
        endpoint = shared_moto_server()
        with dummy_aws_credentials():
            broker = await connect(f"sqs://?region={REGION}&endpoint={endpoint}&wait=1")
            try:
                yield broker, prefix
            finally:
                await broker.close()
                await asyncio.to_thread(delete_prefixed, endpoint, prefix)


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


async def until_spans(spans: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    """The spans called `name` once `count` of them have ended (a span ends just after
    its handler returns, so a handler's own signal comes a little early)."""

    async def ended() -> bool:
        return len(named(spans, name)) >= count

    await eventually(ended, timeout=30, what=f"{count} span(s) {name!r}")
    return named(spans, name)


def event(span: ReadableSpan, name: str) -> dict:
    (found,) = [e for e in span.events if e.name == name]
    return dict(found.attributes)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_consumer_continues_the_publishers_trace(backend, spans):
    async with opened(backend) as (broker, prefix):
        # Given a billing handler that publishes a follow-up the mail handler consumes
        placed, billed = prefix + "orders.placed", prefix + "orders.billed"
        app = App(prefix + "shop")
        seen: list[Message] = []
        mailed = asyncio.Event()

        @app.handler(placed, queue=prefix + "billing")
        async def bill(order: dict, ctx: Context) -> None:
            seen.append(ctx.message)
            await ctx.publish(billed, order)

        @app.handler(billed, queue=prefix + "mail")
        async def mail(order: dict) -> None:
            mailed.set()

        async with Worker(app, broker, settings=SETTINGS):
            # When an order is published inside a caller's trace
            upstream = TraceContextTextMapPropagator().extract(UPSTREAM)
            with trace.get_tracer("test").start_as_current_span("checkout", context=upstream):
                message_id = await Publisher(broker).publish(placed, {"sku": "book"}, headers={"tenant": "acme"})
            await asyncio.wait_for(mailed.wait(), 30)
            (billing,) = await until_spans(spans, f"process {prefix}billing", 1)
            (mailing,) = await until_spans(spans, f"process {prefix}mail", 1)

    # Then every span is in the caller's trace, its trace state carried along
    (publish,) = named(spans, f"publish {placed}")
    (follow_up,) = named(spans, f"publish {billed}")
    assert {s.context.trace_id for s in (publish, billing, follow_up, mailing)} == {UPSTREAM_TRACE_ID}
    assert billing.context.trace_state.get("shop") == "checkout"
    # and each process span is the child of, and links to, the publish that sent its message
    for process, sender in ((billing, publish), (mailing, follow_up)):
        assert process.parent.span_id == sender.context.span_id and process.parent.is_remote
        assert [link.context.span_id for link in process.links] == [sender.context.span_id]
    assert follow_up.parent.span_id == billing.context.span_id
    # and the headers carried the context next to the user's own
    assert seen[0].headers["tenant"] == "acme" and seen[0].headers["tracestate"] == "shop=checkout"
    assert seen[0].headers["traceparent"].split("-")[1:3] == [
        f"{UPSTREAM_TRACE_ID:032x}",
        f"{publish.context.span_id:016x}",
    ]
    # and the spans speak the messaging conventions
    publish_system, process_system = SYSTEMS[backend]
    assert publish.kind is SpanKind.PRODUCER and billing.kind is SpanKind.CONSUMER
    assert dict(publish.attributes) == {
        "messaging.system": publish_system,
        "messaging.operation.type": "publish",
        "messaging.operation.name": "publish",
        "messaging.destination.name": placed,
        "messaging.message.id": message_id,
    }
    assert billing.attributes["messaging.system"] == process_system
    assert billing.attributes["messaging.operation.type"] == "process"
    assert billing.attributes["messaging.destination.name"] == prefix + "billing"
    assert billing.attributes["messaging.destination_publish.name"] == placed
    assert billing.attributes["messaging.message.id"] == message_id
    assert billing.attributes["mailbag.attempt"] == 1
    assert follow_up.attributes["messaging.message.conversation_id"] == message_id


@pytest.mark.parametrize("backend", BACKENDS)
async def test_retries_and_dead_letters_show_on_the_trace(backend, spans):
    async with opened(backend) as (broker, prefix):
        # Given a handler whose dependency is down, allowed two attempts
        placed, queue = prefix + "orders.placed", prefix + "billing"
        delay = RETRY_DELAYS[backend]
        app = App(prefix + "shop")

        @app.handler(placed, queue=queue, model=Order, retry=RetryPolicy(2, delay, 1.0, delay))
        async def bill(order: Order) -> None:
            raise ConnectionError("card service down")

        async with Worker(app, broker, settings=SETTINGS):
            # When a valid order and an invalid one are published in one trace
            with trace.get_tracer("test").start_as_current_span("checkout") as root:
                await Publisher(broker).publish(placed, {"sku": "book"})
                await Publisher(broker).publish(placed, {"quantity": 2})
            processed = await until_spans(spans, f"process {queue}", 3)

    # Then all three tries are in the caller's trace and say what became of them
    assert {s.context.trace_id for s in processed} == {root.get_span_context().trace_id}
    assert all(s.status.status_code is StatusCode.ERROR for s in processed)
    retried = next(s for s in processed if any(e.name == "retry" for e in s.events))
    assert event(retried, "retry") == {"mailbag.delay": delay, "mailbag.reason": "ConnectionError: card service down"}
    assert event(retried, "exception")["exception.type"] == "ConnectionError"
    assert retried.attributes["mailbag.attempt"] == 1 and retried.attributes["error.type"] == "ConnectionError"
    dead = [s for s in processed if any(e.name == "dead_letter" for e in s.events)]
    reasons = sorted(event(s, "dead_letter")["mailbag.reason"] for s in dead)
    assert reasons[0] == "failed after 2 attempt(s): ConnectionError: card service down"
    assert "sku" in reasons[1]  # the validation error of the invalid payload, refused before any handler ran
    # and nothing of the invalid body reaches the spans (pydantic's error quotes its input)
    assert not [s for s in processed for e in s.events if "quantity" in str(dict(e.attributes or {}))]
    assert sorted(s.attributes["mailbag.attempt"] for s in dead) == [1, 2]


async def test_a_postponed_message_stays_in_its_trace(spans):
    # Given a handler that puts its first delivery back untried
    app = App("shop")
    calls: list[int] = []

    @app.handler("orders.placed", queue="billing")
    async def bill(order: dict, ctx: Context) -> None:
        calls.append(ctx.attempt)
        if len(calls) == 1:
            raise Postpone(0.0, "stock count running")

    # When an order is published in a trace
    async with MemoryBroker() as broker, Worker(app, broker, settings=SETTINGS):
        with trace.get_tracer("test").start_as_current_span("checkout") as root:
            await Publisher(broker).publish("orders.placed", {"sku": "book"})
        first, second = await until_spans(spans, "process billing", 2)

    # Then both tries are in it: the first says it was postponed, and neither failed
    assert calls == [1, 1]
    assert {first.context.trace_id, second.context.trace_id} == {root.get_span_context().trace_id}
    assert event(first, "postpone") == {"mailbag.delay": 0.0, "mailbag.reason": "stock count running"}
    assert first.status.status_code is second.status.status_code is StatusCode.UNSET


async def test_the_outbox_relay_keeps_the_trace_the_event_was_written_in(spans, tmp_path):
    # Given an event written to the outbox inside the trace of the order it records
    outbox = SqliteOutbox(str(tmp_path / "shop.db"))
    app = App("shop")
    handled = asyncio.Event()

    @app.handler("orders.placed", queue="billing")
    async def bill(order: dict) -> None:
        handled.set()

    conn = sqlite3.connect(tmp_path / "shop.db")
    outbox.create_table(conn)
    with trace.get_tracer("test").start_as_current_span("place order") as root:
        with conn:
            outbox.add(conn, "orders.placed", {"sku": "book"})
    conn.close()

    # When the relay publishes it later, outside that trace
    async with MemoryBroker() as broker, Worker(app, broker, settings=SETTINGS):
        assert await Relay(outbox, Publisher(broker)).drain() == 1
        await asyncio.wait_for(handled.wait(), 10)
        (process,) = await until_spans(spans, "process billing", 1)
    await outbox.close()

    # Then the consumer continues the order's trace from the moment the event was written
    (create,) = named(spans, "create orders.placed")
    (publish,) = named(spans, "publish orders.placed")
    assert create.context.trace_id == process.context.trace_id == root.get_span_context().trace_id
    assert process.parent.span_id == create.context.span_id
    # and the relay's publish, a trace of its own, links to it
    assert publish.context.trace_id != root.get_span_context().trace_id
    assert [link.context.span_id for link in publish.links] == [create.context.span_id]


@pytest.mark.parametrize("mode", ["saga", "choreography"])
async def test_every_span_of_an_order_flow_shares_one_trace(mode, spans, tmp_path):
    # Given the order flow with a payment that declines every third order
    shop = Shop(payments=Payments(fail_every=3), timeline=Timeline(expected=3))
    saga = order_saga()
    store = await open_store(f"sqlite:///{tmp_path / 'sagas.db'}")
    roots: dict[str, int] = {}
    tracer = trace.get_tracer("test")
    try:
        async with MemoryBroker() as broker:
            app = build_participants(shop, saga) if mode == "saga" else build_app(shop)
            async with Worker(app, broker, settings=SETTINGS), Orchestrator(saga, store, broker) as orchestrator:
                # When each order starts in a trace of its own
                for order in sample_orders(3):
                    with tracer.start_as_current_span(f"order {order.order_id}") as root:
                        if mode == "saga":
                            await orchestrator.begin(order.order_id, order.model_dump(mode="json"))
                        else:
                            await place_order(broker, shop, order)
                    roots[order.order_id] = root.get_span_context().trace_id
                await asyncio.wait_for(shop.timeline.all_told.wait(), 30)
    finally:
        await store.close()

    # Then every messaging span of an order (its conversation) is in that order's trace
    flows: dict[str, set[int]] = {}
    for span in spans.get_finished_spans():
        conversation = span.attributes.get("messaging.message.conversation_id")
        if conversation is not None:
            flows.setdefault(conversation, set()).add(span.context.trace_id)
    assert set(flows) == set(roots)
    if mode == "saga":
        assert flows == {order_id: {trace_id} for order_id, trace_id in roots.items()}
    else:
        # the example announces orders with a plain broker.publish: each flow's trace
        # starts at the first consumer, still one per order
        assert all(len(traces) == 1 for traces in flows.values())
        assert len(set.union(*flows.values())) == 3
    # and the flow crossed every service, the declined order's compensation included
    processed = {s.name.removeprefix("process ") for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER}
    expected = {"orders.commands", "inventory.commands", "payment.commands", "notification.send", "order-saga.replies"}
    if mode == "choreography":
        expected = {"inventory.reserve", "payment.charge", "inventory.release", "orders.status", "notification.send"}
    assert expected <= processed, processed


async def test_without_opentelemetry_nothing_breaks_and_no_headers_are_added(spans, without_opentelemetry, tmp_path):
    # Given a worker whose handler publishes a follow-up, and an outbox
    app = App("shop")
    seen: list[Message] = []
    done = asyncio.Event()

    @app.handler("orders.placed", queue="billing")
    async def bill(order: dict, ctx: Context) -> None:
        seen.append(ctx.message)
        await ctx.publish("orders.billed", order, headers={"tenant": "acme"})

    @app.handler("orders.billed", queue="mail")
    async def mail(order: dict, ctx: Context) -> None:
        seen.append(ctx.message)
        done.set()

    outbox = SqliteOutbox(str(tmp_path / "shop.db"))
    conn = sqlite3.connect(tmp_path / "shop.db")
    outbox.create_table(conn)
    with trace.get_tracer("test").start_as_current_span("checkout"):
        with conn:
            outbox.add(conn, "orders.placed", {"sku": "book"}, headers={"tenant": "acme"})
        message = Message("orders.placed", b"{}", headers={"tenant": "acme"})
        assert tracing.created(message) is message
    conn.close()

    # When the event goes through the relay, the worker and the follow-up
    async with MemoryBroker() as broker, Worker(app, broker, settings=SETTINGS):
        assert await Relay(outbox, Publisher(broker)).drain() == 1
        await asyncio.wait_for(done.wait(), 10)
    await outbox.close()

    # Then everything was handled, with only the user's headers and no span but the test's own
    assert [m.headers for m in seen] == [{"tenant": "acme"}, {"tenant": "acme"}]
    assert [s.name for s in spans.get_finished_spans()] == ["checkout"]

    # and the tracing middleware is left out of the chain
    async def handler(ctx: Context) -> None: ...

    assert chain([Tracing()], handler, app.handler_for("billing", "orders.placed")) is handler


async def test_with_no_sdk_configured_no_context_is_carried():
    # Given OpenTelemetry's API with no SDK behind it (the global default)
    app = App("shop")
    seen: list[Message] = []
    done = asyncio.Event()

    @app.handler("orders.placed", queue="billing")
    async def bill(order: dict, ctx: Context) -> None:
        seen.append(ctx.message)
        done.set()

    # When a traced publish goes through
    async with MemoryBroker() as broker, Worker(app, broker, settings=SETTINGS):
        with trace.get_tracer("test").start_as_current_span("checkout"):
            await Publisher(broker).publish("orders.placed", {"sku": "book"}, headers={"tenant": "acme"})
        await asyncio.wait_for(done.wait(), 10)

    # Then the message carries the user's headers only, and no span was started for it
    assert seen[0].headers == {"tenant": "acme"}

    async def handler(ctx: Context) -> None: ...

    assert chain([Tracing()], handler, app.handler_for("billing", "orders.placed")) is handler


@pytest.mark.parametrize("body", [b'{"sku": "book"}', b"\x00\xff binary"], ids=["text", "binary"])
def test_a_traced_message_with_every_field_and_many_headers_fits_sqs(body, spans):
    # Given a message using every envelope attribute SQS carries (a binary body needs
    # one more) and more headers than attributes are left
    headers = {f"h{i}": f"v{i}" for i in range(12)}
    message = Message(
        "orders.placed",
        body,
        type="OrderPlaced",
        correlation_id="order-7",
        causation_id="cart-3",
        ordering_key="order-7",
        headers=headers,
    )
    # When it gets a creation context inside a caller's trace (traceparent and tracestate)
    upstream = TraceContextTextMapPropagator().extract(UPSTREAM)
    with trace.get_tracer("test").start_as_current_span("checkout", context=upstream):
        traced = tracing.created(message)
    w = wire.to_wire(traced)

    # Then it still fits the ten attributes raw SNS -> SQS delivery allows
    assert len(w.attributes) == wire.MAX_ATTRIBUTES
    # with the trace context first in line for the one attribute left to headers, so
    # other tools read it; with none left it is packed with the other headers
    if wire.BODY_ENCODING in w.attributes:
        assert "traceparent" not in w.attributes and "traceparent" in w.attributes[wire.HEADERS]["StringValue"]
    else:
        assert w.attributes["traceparent"]["StringValue"] == traced.headers["traceparent"]
    # and everything comes back as it went
    back = wire.from_wire({"Body": w.body, "MessageId": "x", "MessageAttributes": w.attributes}, "orders.placed")
    assert back == traced and back.headers["tracestate"] == "shop=checkout"
