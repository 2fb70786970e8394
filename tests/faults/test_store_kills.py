"""The PostgreSQL idempotency store's backends killed every second while a worker drains
2,000 messages: the worker never stops handling, no message waits on a stall of 10 s
or more, and a transactional handler's effects land once each.

Only this test's own backends are killed: its store connects under an
`application_name` of its own, and the killer picks backends by that name."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings
from mailbag.workers.metrics import Metrics
from tests.workers.conftest import postgres_store_with_ledger, terminate_backends

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
    killed = 0
    while not stop.is_set():
        killed += await terminate_backends(application_name)
        try:
            await asyncio.wait_for(stop.wait(), KILL_EVERY)
        except TimeoutError:
            pass
    return killed


def _handled(metrics: Metrics) -> float:
    return sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "mailbag_messages_handled"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def _drain(metrics: Metrics) -> tuple[float, float]:
    """Watch the handled count until `MESSAGES`: (seconds the drain took, longest time
    without a message handled). Fails on a stall of `MAX_STALL` or a drain over 4 minutes."""
    handled = longest = 0.0
    began = last = time.monotonic()
    while handled < MESSAGES:
        now = time.monotonic()
        if (count := _handled(metrics)) > handled:
            handled, last = count, now
        longest = max(longest, now - last)
        assert longest < MAX_STALL, f"no message handled for {longest:.1f}s ({handled:.0f} of {MESSAGES})"
        assert now - began < 240, f"only {handled:.0f} of {MESSAGES} handled in {now - began:.0f}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - began, longest


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "plain"])
async def test_a_drain_survives_the_store_backends_killed_every_second(transactional):
    # Given a worker whose PostgreSQL store runs under a name of its own, a ledger the
    # handler writes (in the store's transaction when transactional), and 2,000 messages
    broker, metrics, app = MemoryBroker(), Metrics(), App("kills")
    effects: list[int] = []
    async with postgres_store_with_ledger() as (store, name, ledger):
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
        async with worker:
            # When the store's backends are killed every second through the whole drain
            killer = asyncio.create_task(_kill_backends(name, stop_killing))
            try:
                await broker.publish("orders", [Message("orders", b'{"n": %d}' % n) for n in range(MESSAGES)])
                drained, longest = await _drain(metrics)
            finally:
                stop_killing.set()
                killed = await killer
        # Then every message was handled, none dead-lettered, no runner died, and a
        # transactional handler's effects landed once each
        stats = await broker.stats("orders.q")
        assert (stats.ready, stats.in_flight, stats.delayed, stats.dead_letters) == (0, 0, 0, 0)
        assert worker.runner_restarts == 0
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
    await broker.close()
