"""A running handler renews its idempotency lease (a heartbeat), so a lease can be
short, letting a dead worker's claims free up quickly, without a long handler losing
its key to a duplicate."""

from __future__ import annotations

import asyncio

from mailbag.broker import Message
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings
from tests.conformance.env import eventually


async def test_a_handler_running_past_its_lease_keeps_its_key_and_a_duplicate_waits_for_the_outcome():
    # Given a 3 s lease and a handler that runs for 5 s
    broker = MemoryBroker()
    app = App("shop")
    runs: list[int] = []
    started = asyncio.Event()

    @app.handler("orders", queue="slow.q")
    async def slow(payload: dict, ctx: Context) -> dict:
        runs.append(ctx.attempt)
        started.set()
        await asyncio.sleep(5)
        return {"done": True}

    settings = WorkerSettings(idempotency_url="memory://", idempotency_lease=3, concurrency=2)
    async with Worker(app, broker, settings=settings):
        message = Message("orders", b"{}")
        await broker.publish("orders", [message])
        await asyncio.wait_for(started.wait(), 5)
        # When the same message is delivered again while the first run goes on
        await broker.publish("orders", [message])

        async def settled() -> bool:
            s = await broker.stats("slow.q")
            return (s.ready, s.in_flight, s.delayed) == (0, 0, 0)

        await eventually(settled, timeout=20, what="both deliveries to be settled")
    # Then the handler ran once: the duplicate found the renewed lease, then the outcome
    assert runs == [1]
    await broker.close()
