"""A handler's follow-up publishes carry ids derived from the incoming message, the
handler and their position, so a retried handler republishes under the same ids and
downstream idempotency drops the duplicates."""

from __future__ import annotations

from mailbag.broker import Message, RetryPolicy, Topology
from mailbag.broker.memory import MemoryBroker
from mailbag.broker.topology import Queue
from mailbag.workers import App, Context, Worker
from tests.conformance.env import eventually, next_delivery


async def test_a_retried_handler_publishes_its_follow_ups_under_the_same_ids():
    # Given a handler that publishes two follow-ups and fails its first attempt after them
    broker = MemoryBroker()
    app = App("shop")

    @app.handler("orders", queue="reserve.q", retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def reserve(payload: dict, ctx: Context) -> None:
        await ctx.publish("reserved", {"order": payload["n"], "line": 1})
        await ctx.publish("reserved", {"order": payload["n"], "line": 2})
        if ctx.attempt == 1:
            raise ConnectionError("inventory timed out after publishing")

    await broker.declare(Topology(queues=(Queue("audit.q", ("reserved",)),)))
    async with Worker(app, broker):
        # When two orders are handled, each retried once
        await broker.publish("orders", [Message("orders", b'{"n": 1}'), Message("orders", b'{"n": 2}')])

        async def eight_published() -> bool:
            return (await broker.stats("audit.q")).ready == 8

        await eventually(eight_published, what="eight follow-ups")
    seen: dict[str, list[bytes]] = {}
    async with broker.consume("audit.q", prefetch=8) as consumer:
        for _ in range(8):
            delivery = await next_delivery(consumer)
            seen.setdefault(delivery.message.id, []).append(delivery.message.body)
            await delivery.ack()
    # Then each follow-up went out twice under one id: four ids, each with one body
    assert len(seen) == 4
    assert all(len(bodies) == 2 and bodies[0] == bodies[1] for bodies in seen.values())
    await broker.close()
