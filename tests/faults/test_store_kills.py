"""The PostgreSQL idempotency store's backends killed every second while a worker drains
2,000 messages: the worker never stops handling, no message waits on a stall of 10 s
or more, and a transactional handler's effects land once each.

Only this test's own backends are killed: its store connects under an
`application_name` of its own, and the killer picks backends by that name."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import pytest

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings
from mailbag.workers.metrics import Metrics
from mailbag.workers.stores import open_store
from tests.workers.conftest import POSTGRES_URL, require, unique

MESSAGES = 2000
#: the longest the drain may go without a message handled
MAX_STALL = 10.0
KILL_EVERY = 1.0
#: each handler's own work (a call downstream), so the drain outlasts many kills
WORK = 0.05
PATIENT = RetryPolicy(max_attempts=100, initial_delay=0.05, multiplier=2, max_delay=1.0)


async def _kill_backends(application_name: str, stop: asyncio.Event) -> int:
    """Terminate every backend of `application_name` every `KILL_EVERY` seconds until
    `stop`; how many were killed in all."""
    admin = await asyncpg.connect(POSTGRES_URL)
    killed = 0
    try:
        while not stop.is_set():
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                application_name,
            )
            killed += len(rows)
            try:
                await asyncio.wait_for(stop.wait(), KILL_EVERY)
            except TimeoutError:
                pass
    finally:
        await admin.close()
    return killed


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "plain"])
async def test_a_drain_survives_the_store_backends_killed_every_second(transactional):
    # Given a worker whose PostgreSQL store runs under a name of its own, a ledger the
    # handler writes (in the store's transaction when transactional), and 2,000 messages
    require("postgres")
    name, table, ledger = unique("mbkill"), unique("idem"), unique("ledger")
    store = await open_store(f"{POSTGRES_URL}?table={table}&application_name={name}")
    async with store.connection() as conn:
        await conn.execute(f"CREATE TABLE {ledger} (n INT NOT NULL)")
    broker, metrics, app = MemoryBroker(), Metrics(), App("kills")
    effects: list[int] = []

    if transactional:

        @app.handler("orders", queue="orders.q", transactional=True, retry=PATIENT)
        async def book(payload: dict, ctx: Context) -> None:
            await ctx.transaction.execute(f"INSERT INTO {ledger} VALUES ($1)", payload["n"])
            await ctx.transaction.execute("SELECT pg_sleep($1)", WORK)

    else:

        @app.handler("orders", queue="orders.q", retry=PATIENT)
        async def count(payload: dict, ctx: Context) -> None:
            effects.append(payload["n"])
            await asyncio.sleep(WORK)

    settings = WorkerSettings(retry_jitter=False, concurrency=8)
    worker = Worker(app, broker, store=store, settings=settings, metrics=metrics)
    stop_killing = asyncio.Event()
    killer: asyncio.Task[int] | None = None
    handled = 0.0
    longest = 0.0
    try:
        await worker.start()
        # When the store's backends are killed every second through the whole drain
        killer = asyncio.create_task(_kill_backends(name, stop_killing))
        await broker.publish("orders", [Message("orders", b'{"n": %d}' % n) for n in range(MESSAGES)])
        began = last = time.monotonic()
        deadline = began + 240
        while handled < MESSAGES:
            now = time.monotonic()
            count_now = sum(
                s.value
                for family in metrics.registry.collect()
                if family.name == "mailbag_messages_handled"
                for s in family.samples
                if s.name.endswith("_total")
            )
            if count_now > handled:
                handled, last = count_now, now
            longest = max(longest, now - last)
            assert longest < MAX_STALL, f"no message handled for {longest:.1f}s ({handled:.0f} of {MESSAGES})"
            assert now < deadline, f"only {handled:.0f} of {MESSAGES} handled in {now - began:.0f}s"
            await asyncio.sleep(0.05)
        drained = time.monotonic() - began
    finally:
        stop_killing.set()
        killed = await killer if killer is not None else 0
        await worker.stop()
    try:
        # Then every message was handled, none dead-lettered, no runner died, and a
        # transactional handler's effects landed once each
        stats = await broker.stats("orders.q")
        assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_letters) == (0, 0, 0, 0)
        assert getattr(worker, "runner_restarts", 0) == 0
        if transactional:
            async with store.connection() as conn:
                effects = [r[0] for r in await conn.fetch(f"SELECT n FROM {ledger}")]
        twice = sum(1 for times in Counter(effects).values() if times > 1)
        assert set(effects) == set(range(MESSAGES))
        if transactional:
            assert twice == 0
        print(
            f"{'transactional' if transactional else 'plain'}: {MESSAGES} handled in {drained:.1f}s, "
            f"{killed} backends killed, effects twice {twice}, longest stall {longest:.2f}s"
        )
    finally:
        async with store.connection() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {ledger}")
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await store.close()
        await broker.close()
