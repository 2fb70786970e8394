"""Sixty transactional handlers of 1 s each, forty at a time, on the SQLite store: SQLite
has one writer, so they take turns, and none is dead-lettered for waiting on the lock."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.sqlite import SqliteStore
from tests.conformance.env import eventually
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared

MESSAGES, CONCURRENCY, WORK = 60, 40, 1.0


@pytest.mark.timeout(300)  # a minute of serialised work, more on a busy machine
async def test_sixty_one_second_transactional_handlers_at_concurrency_40_are_all_applied_once(tmp_path):
    # Given a worker at concurrency 40 on RabbitMQ with the SQLite store, and a
    # transactional handler that writes a ledger row and holds its transaction for 1 s
    stem = run_name("lk")
    topic = f"{stem}.book"
    app = App("ledger")

    @app.handler(topic, queue=topic, transactional=True, retry=RetryPolicy(max_attempts=10, initial_delay=0.5))
    async def book(payload: dict, ctx: Context) -> None:
        await ctx.transaction.execute("INSERT INTO ledger VALUES (?)", (payload["n"],))
        await asyncio.sleep(WORK)  # the handler's work, inside its transaction

    store = SqliteStore(tmp_path / "idem.sqlite3")
    await store.setup()
    async with store.connection() as conn:
        await conn.execute("CREATE TABLE ledger (n INTEGER NOT NULL)")
    broker = await open_broker(amqp_url())
    try:
        async with Worker(app, broker, concurrency=CONCURRENCY, store=store):
            # When sixty messages arrive at once
            began = time.monotonic()
            await broker.publish(topic, [Message(topic, b'{"n": %d}' % n) for n in range(MESSAGES)])

            async def all_written() -> bool:
                async with store.connection() as conn:
                    return (await store.fetch(conn, "SELECT COUNT(*) FROM ledger"))[0][0] >= MESSAGES

            await eventually(all_written, timeout=MESSAGES * WORK * 2.5, what="every message to be written")
            print(f"{MESSAGES} x {WORK:g}s transactional handlers in {time.monotonic() - began:.1f}s")

            async def drained() -> bool:
                s = await broker.stats(topic)
                return s.ready == 0 and not s.delayed  # None on RabbitMQ: the delay levels are shared

            await eventually(drained, what="the queue to drain")
        # Then every message was applied exactly once, and none was dead-lettered
        async with store.connection() as conn:
            rows = sorted(r[0] for r in await store.fetch(conn, "SELECT n FROM ledger"))
        assert rows == list(range(MESSAGES))
        assert (await broker.stats(topic)).dead_letters == 0
    finally:
        await store.close()
        await broker.close()
        await remove_declared(broker)
