"""Transactional idempotency (SQLite, PostgreSQL): the handler's writes and the record
that the message was handled commit together, so no crash point applies a message twice."""

from __future__ import annotations

import asyncio

import pytest

from mailbag.broker import BrokerUnavailable, Message
from mailbag.broker.memory import MemoryBroker, _MemoryDelivery
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.sqlite import SqliteStore
from tests.conformance.env import eventually
from tests.workers.conftest import unique


class Ledger:
    """A side-effect table in the store's own database, written through `ctx.transaction`."""

    def __init__(self, store) -> None:
        self.store = store
        self.table = unique("ledger")
        self.sqlite = isinstance(store, SqliteStore)

    async def create(self) -> None:
        async with self.store.connection() as conn:
            await self.store.fetch(conn, f"CREATE TABLE {self.table} (order_id TEXT NOT NULL)")

    async def write(self, conn, order_id: str) -> None:
        if self.sqlite:
            await conn.execute(f"INSERT INTO {self.table} VALUES (?)", (order_id,))
        else:
            await conn.execute(f"INSERT INTO {self.table} VALUES ($1)", order_id)

    async def rows(self) -> list[str]:
        async with self.store.connection() as conn:
            return sorted(r[0] for r in await self.store.fetch(conn, f"SELECT order_id FROM {self.table}"))

    async def drop(self) -> None:
        async with self.store.connection() as conn:
            await self.store.fetch(conn, f"DROP TABLE {self.table}")


async def _idle(broker) -> bool:
    s = await broker.stats("orders.q")
    return (s.ready, s.in_flight, s.delayed) == (0, 0, 0)


async def test_a_crash_between_the_write_and_the_commit_leaves_nothing_and_the_redelivery_writes_once(
    transactional_store,
):
    # Given a transactional handler that hangs after its write on the first attempt
    ledger = Ledger(transactional_store)
    await ledger.create()
    broker = MemoryBroker()
    app = App("shop")
    wrote = asyncio.Event()

    @app.handler("orders", queue="orders.q", transactional=True)
    async def book(payload: dict, ctx: Context) -> None:
        await ledger.write(ctx.transaction, payload["order"])
        wrote.set()
        if ctx.attempt == 1:
            await asyncio.Event().wait()

    try:
        # When the worker dies with the write made but not committed
        first = Worker(app, broker, store=transactional_store)
        await first.start()
        await broker.publish("orders", [Message("orders", b'{"order": "o-1"}')])
        await asyncio.wait_for(wrote.wait(), 10)
        await first.stop(grace_period=0)
        assert await ledger.rows() == []
        # Then another worker handles the message that came back, and it is written once
        async with Worker(app, broker, store=transactional_store):
            await eventually(lambda: _idle(broker), what="the redelivery to be acked")
        assert await ledger.rows() == ["o-1"]
    finally:
        await ledger.drop()


async def test_a_crash_after_the_commit_before_the_ack_does_not_apply_twice(transactional_store, monkeypatch):
    # Given a transactional handler, and a broker connection that drops at the first ack
    ledger = Ledger(transactional_store)
    await ledger.create()
    broker = MemoryBroker()
    app = App("shop")
    calls = []

    @app.handler("orders", queue="orders.q", transactional=True)
    async def book(payload: dict, ctx: Context) -> dict:
        calls.append(ctx.attempt)
        await ledger.write(ctx.transaction, payload["order"])
        return {"booked": payload["order"]}

    real_ack = _MemoryDelivery._ack
    acks = []

    async def dropping_ack(self):
        acks.append(self.message.id)
        if len(acks) == 1:
            raise BrokerUnavailable("connection lost")
        await real_ack(self)

    monkeypatch.setattr(_MemoryDelivery, "_ack", dropping_ack)
    try:
        # When the commit succeeded but the ack was lost, and the message comes back
        async with Worker(app, broker, store=transactional_store):
            await broker.publish("orders", [Message("orders", b'{"order": "o-2"}')])
            await eventually(lambda: _acked(acks, 1), what="the lost ack")
        async with Worker(app, broker, store=transactional_store):
            await eventually(lambda: _idle(broker), what="the redelivery to be acked")
        # Then the handler ran once and the row exists once
        assert calls == [1] and len(acks) == 2
        assert await ledger.rows() == ["o-2"]
    finally:
        await ledger.drop()


async def _acked(acks, n) -> bool:
    return len(acks) >= n


async def test_a_transactional_handler_needs_a_transactional_store():
    broker = MemoryBroker()
    app = App("shop")

    @app.handler("orders", queue="orders.q", transactional=True)
    async def book(payload: dict, ctx: Context) -> None: ...

    worker = Worker(app, broker)  # memory broker -> memory store
    with pytest.raises(ValueError, match="must be SQLite or PostgreSQL"):
        await worker.start()
