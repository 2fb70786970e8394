"""The idempotency store failing under a worker is the store's fault, not the
message's: claims, transactions and commits that fail are retried under the handler's
retry policy and never dead-letter at the first attempt, and an outcome that cannot be
recorded after a successful run is recorded again without running the handler again."""

from __future__ import annotations

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings
from mailbag.workers.stores.memory import MemoryStore
from tests.conformance.env import eventually
from tests.workers.conftest import postgres_store_with_ledger, terminate_backends

QUICK = RetryPolicy(max_attempts=5, initial_delay=0.05, multiplier=1, max_delay=0.05)


async def _settled(broker: MemoryBroker, queue: str) -> bool:
    s = await broker.stats(queue)
    return (s.ready, s.in_flight, s.delayed) == (0, 0, 0)


async def test_postgresql_connections_dropped_under_the_worker_are_retried_not_dead_lettered():
    # Given a worker with a PostgreSQL store whose pooled connections are warm, a transactional
    # and a plain handler, and retries only for KeyError (the handler's own failures)
    broker = MemoryBroker()
    app = App("shop")
    plain: list[int] = []
    async with postgres_store_with_ledger() as (store, name, ledger):

        @app.handler("orders", queue="book.q", transactional=True, retry=QUICK, retry_on=(KeyError,))
        async def book(payload: dict, ctx: Context) -> None:
            await ctx.transaction.execute(f"INSERT INTO {ledger} VALUES ($1)", payload["n"])

        @app.handler("orders", queue="plain.q", retry=QUICK, retry_on=(KeyError,))
        async def count(payload: dict, ctx: Context) -> None:
            plain.append(payload["n"])

        async with Worker(app, broker, concurrency=4, store=store, settings=WorkerSettings(retry_jitter=False)):
            await broker.publish("orders", [Message("orders", b'{"n": 0}')])
            await eventually(lambda: _settled(broker, "book.q"), what="the warm-up message")
            await eventually(lambda: _settled(broker, "plain.q"), what="the warm-up message")
            # When every connection the store holds is terminated, and more messages come
            assert await terminate_backends(name) >= 1
            await broker.publish("orders", [Message("orders", b'{"n": %d}' % n) for n in range(1, 11)])
            await eventually(lambda: _settled(broker, "book.q"), what="book.q to drain")
            await eventually(lambda: _settled(broker, "plain.q"), what="plain.q to drain")
        # Then nothing is dead-lettered, and every message was applied once
        assert (await broker.stats("book.q")).dead_letters == 0
        assert (await broker.stats("plain.q")).dead_letters == 0
        async with store.connection() as conn:
            assert sorted(r[0] for r in await conn.fetch(f"SELECT n FROM {ledger}")) == list(range(11))
        assert sorted(plain) == list(range(11))
    await broker.close()


class _CompleteFailsTwice(MemoryStore):
    """A memory store whose `complete` fails the first two times (a dropped connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.complete_calls = 0

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        self.complete_calls += 1
        if self.complete_calls <= 2:
            raise ConnectionResetError("connection reset by peer")
        await super().complete(key, token, outcome, ttl)


async def test_an_outcome_that_fails_to_record_is_recorded_again_without_running_the_handler_again():
    # Given a store that fails to record the first outcome twice
    broker, store = MemoryBroker(), _CompleteFailsTwice()
    app = App("shop")
    runs: list[str] = []

    @app.handler("orders", queue="charge.q", retry=QUICK)
    async def charge(payload: dict, ctx: Context) -> dict:
        runs.append(ctx.message_id)
        return {"charged": payload["n"]}

    async with Worker(app, broker, store=store):
        message = Message("orders", b'{"n": 7}')
        # When a message is handled, and then delivered again
        await broker.publish("orders", [message])
        await eventually(lambda: _settled(broker, "charge.q"), what="the message to be settled")
        await broker.publish("orders", [message])
        await eventually(lambda: _settled(broker, "charge.q"), what="the duplicate to be settled")
    # Then the handler ran once, nothing was dead-lettered, and the outcome was recorded on the third try
    assert runs == [message.id]
    assert (await broker.stats("charge.q")).dead_letters == 0
    assert store.complete_calls == 3
    await broker.close()
