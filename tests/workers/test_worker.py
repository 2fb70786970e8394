"""Settlement follows the handler's outcome."""

import asyncio

from pydantic import BaseModel

from mailbag.broker import Message, RetryPolicy
from mailbag.broker import headers as h
from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Reject, Worker, WorkerSettings
from tests.conformance.env import eventually


class Order(BaseModel):
    order_id: str
    amount: int


def order(topic: str, body: bytes, **kw) -> Message:
    return Message(topic, body, **kw)


async def dead_letters(broker, queue):
    return await broker.browse(f"{queue}.dlq")


async def test_invalid_payload_goes_to_the_dlq_with_the_validation_error_and_the_worker_goes_on(env):
    # Given a typed handler
    broker, topic, queue = env.broker, env.name("orders"), env.name("orders.q")
    app = App("shop")
    handled = []
    good = asyncio.Event()

    @app.handler(topic, queue=queue, model=Order)
    async def handle(o: Order) -> None:
        handled.append(o.order_id)
        good.set()

    async with Worker(app, broker):
        # When a message fails validation, one is not JSON, then a good one follows
        await broker.publish(topic, [order(topic, b'{"order_id": "o-1", "amount": "lots"}')])
        await broker.publish(topic, [order(topic, b"not json at all")])
        await broker.publish(topic, [order(topic, b'{"order_id": "o-2", "amount": 3}')])
        await asyncio.wait_for(good.wait(), 15)
        await eventually(lambda: _count(broker, queue, 2), what="two dead letters")
    # Then both bad ones are dead letters at attempt 1 with the reason, and the good one was handled
    reasons = sorted(m.headers[h.DEAD_REASON] for m in await dead_letters(broker, queue))
    assert "amount: Input should be a valid integer" in reasons[0]
    assert "JSON" in reasons[1]
    assert all(int(m.headers[h.ATTEMPTS]) == 1 for m in await dead_letters(broker, queue))
    assert handled == ["o-2"]


async def _count(broker, queue, n):
    return (await broker.stats(queue)).dead_letters == n


async def test_an_exception_is_retried_with_backoff_then_dead_lettered_with_its_text():
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    app = App("shop")
    attempts = []
    tried = asyncio.Event()

    @app.handler("orders", queue="orders.q", retry=RetryPolicy(max_attempts=3, initial_delay=10, multiplier=2))
    async def handle(payload, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        tried.set()
        raise RuntimeError(f"warehouse offline (attempt {ctx.attempt})")

    async with Worker(app, broker, settings=WorkerSettings(retry_jitter=False)):
        await broker.publish("orders", [order("orders", b"{}")])
        for expected, backoff in ((1, 10), (2, 20)):
            await asyncio.wait_for(tried.wait(), 5)
            tried.clear()
            await eventually(lambda: _delayed(broker, 1), what="the retry to wait out its delay")
            assert attempts == list(range(1, expected + 1))
            await clock.advance(backoff - 0.001)
            assert (await broker.stats("orders.q")).delayed == 1, "came back before its backoff"
            await clock.advance(0.001)
        await eventually(lambda: _count(broker, "orders.q", 1), what="the dead letter")
    assert attempts == [1, 2, 3]
    [letter] = await dead_letters(broker, "orders.q")
    assert "failed after 3 attempt(s): RuntimeError: warehouse offline (attempt 3)" == letter.headers[h.DEAD_REASON]
    assert letter.headers[h.ERROR_TYPE] == "RuntimeError"


async def _delayed(broker, n):
    return (await broker.stats("orders.q")).delayed == n


async def test_reject_dead_letters_at_once_and_sync_handlers_run_off_the_loop():
    broker = MemoryBroker()
    app = App("shop")

    @app.handler("orders", queue="orders.q")
    def handle(payload: dict) -> None:
        raise Reject(f"unknown customer {payload['customer']}")

    async with Worker(app, broker):
        await broker.publish("orders", [order("orders", b'{"customer": "c-7"}')])
        await eventually(lambda: _count(broker, "orders.q", 1), what="the dead letter")
    [letter] = await dead_letters(broker, "orders.q")
    assert letter.headers[h.DEAD_REASON] == "unknown customer c-7"


async def test_ctx_publish_carries_correlation_and_sets_causation():
    broker = MemoryBroker()
    app = App("shop", topics=("orders.reserved",))
    seen = []
    done = asyncio.Event()

    @app.handler("orders", queue="inventory")
    async def reserve(payload: dict, ctx: Context) -> None:
        await ctx.publish("orders.reserved", {"order": payload["order"]}, key="o-1")

    @app.handler("orders.reserved", queue="billing")
    async def bill(payload: dict, ctx: Context) -> None:
        seen.append(ctx.message)
        done.set()

    async with Worker(app, broker):
        first = order("orders", b'{"order": "o-1"}', correlation_id="checkout-42")
        await broker.publish("orders", [first])
        await asyncio.wait_for(done.wait(), 5)
    [follow] = seen
    assert follow.correlation_id == "checkout-42"
    assert follow.causation_id == first.id
    assert follow.ordering_key == "o-1"


async def test_stop_lets_in_flight_handlers_finish_and_returns_the_rest():
    broker = MemoryBroker()
    app = App("shop")
    started = asyncio.Event()
    release = asyncio.Event()
    finished = []

    @app.handler("orders", queue="orders.q")
    async def slow(payload: dict) -> None:
        started.set()
        await release.wait()
        finished.append(payload["n"])

    worker = Worker(app, broker, concurrency=1, prefetch=1)
    await worker.start()
    await broker.publish("orders", [order("orders", b'{"n": %d}' % i) for i in range(3)])
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(worker.stop(grace_period=5))
    release.set()
    await stopping
    assert finished == [0]
    s = await broker.stats("orders.q")
    assert (s.ready, s.in_flight) == (2, 0)
