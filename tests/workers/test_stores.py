"""Every idempotency store keeps the same promises, and with each of them a message
delivered twice, or to two workers at once, has one side effect."""

from __future__ import annotations

import asyncio

from mailbag.broker import Message
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker
from tests.conformance.env import eventually


async def test_claim_complete_then_a_duplicate_sees_the_outcome(store):
    first = await store.claim("q:t:m1", lease=30)
    assert first.status == "claimed" and first.token
    busy = await store.claim("q:t:m1", lease=30)
    assert busy.status == "busy" and 0 < busy.retry_in <= 30
    await store.complete("q:t:m1", first.token, '{"ok": 1}', ttl=60)
    done = await store.claim("q:t:m1", lease=30)
    assert (done.status, done.outcome) == ("done", '{"ok": 1}')
    assert (await store.claim("q:t:other", lease=30)).status == "claimed"


async def test_a_released_claim_can_be_taken_again_and_a_stale_token_changes_nothing(store):
    first = await store.claim("k", lease=30)
    await store.release("k", "not-the-token")
    assert (await store.claim("k", lease=30)).status == "busy"
    await store.release("k", first.token)
    second = await store.claim("k", lease=30)
    assert second.status == "claimed"
    await store.complete("k", first.token, '"late"', ttl=60)  # the old run lost the key
    assert (await store.claim("k", lease=30)).status == "busy"


async def test_an_expired_lease_is_taken_over_and_an_expired_record_forgotten(store):
    dead = await store.claim("k", lease=0.05)
    await eventually(lambda: _claimable(store, "k", lease=30), what="the lease to run out")
    await store.complete("k", dead.token, '"from the dead run"', ttl=60)  # it lost the key
    again = await store.claim("k", lease=30)
    assert again.status == "busy", "the take-over's claim must hold"


async def _claimable(store, key, lease):
    claim = await store.claim(key, lease=lease)
    return claim.status == "claimed"


async def test_a_done_record_expires_after_its_ttl(store):
    claim = await store.claim("k", lease=30)
    await store.complete("k", claim.token, "null", ttl=0.05)
    await eventually(lambda: _claimable(store, "k", lease=30), what="the record's TTL to pass")


def _app(effects: list[str], done: asyncio.Event, expected: int) -> App:
    app = App("shop")

    @app.handler("orders", queue="orders.q")
    async def handle(payload: dict, ctx: Context) -> dict:
        await asyncio.sleep(0.05)  # a slow side effect, so duplicates overlap
        effects.append(payload["order"])
        if len(effects) >= expected:
            done.set()
        return {"charged": payload["order"]}

    return app


async def test_the_same_message_delivered_twice_has_one_side_effect(store):
    # Given a worker whose handler records a side effect
    broker = MemoryBroker()
    effects: list[str] = []
    done = asyncio.Event()
    app = _app(effects, done, expected=1)
    message = Message("orders", b'{"order": "o-1"}')
    async with Worker(app, broker, store=store, concurrency=1):
        # When the broker delivers the message, then delivers it again after it was handled
        await broker.publish("orders", [message])
        await asyncio.wait_for(done.wait(), 10)
        await broker.publish("orders", [message])
        await eventually(lambda: _settled(broker), what="the duplicate to be acked")
    # Then the side effect happened once and nothing was dead-lettered
    assert effects == ["o-1"]
    assert (await broker.stats("orders.q")).dead_letters == 0


async def test_two_workers_handed_the_same_message_at_once_have_one_side_effect(store):
    # Given two workers on one queue
    broker = MemoryBroker()
    effects: list[str] = []
    done = asyncio.Event()
    app = _app(effects, done, expected=1)
    message = Message("orders", b'{"order": "o-2"}')
    async with Worker(app, broker, store=store, concurrency=1), Worker(app, broker, store=store, concurrency=1):
        # When the same message reaches both at the same moment
        await broker.publish("orders", [message, message])
        await asyncio.wait_for(done.wait(), 10)
        await eventually(lambda: _settled(broker), timeout=20, what="both copies to be settled")
    # Then one ran it; the other waited for its outcome instead of running it twice
    assert effects == ["o-2"]
    assert (await broker.stats("orders.q")).dead_letters == 0


async def _settled(broker) -> bool:
    s = await broker.stats("orders.q")
    return (s.ready, s.in_flight, s.delayed) == (0, 0, 0)
