"""The transactional outbox on SQLite and PostgreSQL: an event is published if and only
if its transaction committed, in order per key, through broker outages, by one or
several relays, and sent rows are pruned."""

import asyncio
import sqlite3
from collections import Counter

import asyncpg
import pytest
from pydantic import BaseModel

from mailbag.broker import Message, Queue, RetryPolicy, Topology
from mailbag.broker.memory import MemoryBroker
from mailbag.publishers import BreakerPolicy, PayloadRejected, Publisher, PublisherSettings
from mailbag.publishers.outbox import PostgresOutbox, Relay, RelaySettings, SqliteOutbox
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.sqlite import SqliteStore
from tests.conformance.env import eventually
from tests.publishers.databases import PG_DSN
from tests.publishers.faults import Recording

#: the relay gives up on a publish quickly: its rows are safe in the table meanwhile
PUBLISH = PublisherSettings(
    deadline=2.0,
    attempt_timeout=2.0,
    initial_backoff=0.02,
    max_backoff=0.1,
    breaker=BreakerPolicy(failures=3, reset_after=0.3),
)
RELAY = RelaySettings(batch_size=50, poll_interval=0.2, initial_backoff=0.05, max_backoff=0.5)


class OrderPlaced(BaseModel):
    order_id: str


def stats_say(outbox, **expected):
    async def check() -> bool:
        s = await outbox.stats()
        return all(getattr(s, k) >= v if k in ("sent", "failing") else getattr(s, k) == v for k, v in expected.items())

    return check


async def test_only_committed_events_are_published(orders):
    # Given two committed orders and one whose transaction rolled back
    broker = MemoryBroker()
    publisher = Publisher(broker)
    queue = "billing"
    await broker.declare(Topology(queues=(Queue(queue, ("orders",)),)))
    kept = [
        await orders.place("o-1", "orders", {"order_id": "o-1"}),
        await orders.place("o-2", "orders", {"order_id": "o-2"}),
    ]
    assert await orders.place("o-3", "orders", {"order_id": "o-3"}, fail=True) == ""

    # When the relay runs
    sent = await Relay(orders.outbox, publisher, RELAY).drain()

    # Then exactly the committed events went out, with the ids `add` returned
    assert sent == 2 and await orders.orders() == 2
    assert [m.id for m in await broker.browse(queue)] == kept
    assert (await orders.outbox.stats()).pending == 0


async def test_add_refuses_a_connection_outside_a_transaction(tmp_path, pg_schema):
    lite = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    sqlite_outbox = SqliteOutbox(str(tmp_path / "x.db"))
    sqlite_outbox.create_table(lite)
    with pytest.raises(ValueError, match="needs a transaction"):
        sqlite_outbox.add(lite, "orders", {"n": 1})

    conn = await asyncpg.connect(PG_DSN)
    try:
        outbox = PostgresOutbox(PG_DSN, table=f"{pg_schema}.outbox")
        await outbox.create_table(conn)
        with pytest.raises(ValueError, match="needs a transaction"):
            await outbox.add(conn, "orders", {"n": 1})
    finally:
        await conn.close()


async def test_a_payload_that_does_not_match_the_topic_model_is_refused_at_add(tmp_path):
    outbox = SqliteOutbox(str(tmp_path / "x.db"), models={"orders": OrderPlaced})
    conn = sqlite3.connect(tmp_path / "x.db")
    outbox.create_table(conn)
    with pytest.raises(PayloadRejected, match="order_id"):
        with conn:
            outbox.add(conn, "orders", {"id": "o-1"})
    with conn:
        outbox.add(conn, "orders", {"order_id": "o-1"})
    assert conn.execute("SELECT count(*), max(type) FROM mailbag_outbox").fetchone() == (1, "OrderPlaced")


async def test_orders_committed_while_the_broker_is_unreachable_are_delivered_and_handled_once(link, orders):
    # Given a worker with an idempotent handler, and a relay running through a link that is then cut
    topic = link.name("orders")
    app = App(link.name("billing"))
    seen: set[str] = set()
    handled: Counter[str] = Counter()

    @app.handler(topic, queue=link.name("billing"))
    async def bill(order: dict, ctx) -> None:
        if ctx.message_id in seen:
            return
        seen.add(ctx.message_id)
        handled[order["order_id"]] += 1

    async with Worker(app, link.observer), Relay(orders.outbox, Publisher(link.broker, settings=PUBLISH), RELAY):
        await orders.place("warm-up", topic, {"order_id": "warm-up"})
        await eventually(lambda: _true(handled["warm-up"] == 1), what="the warm-up order handled")
        link.cut()

        # When 200 orders commit while the broker cannot be reached
        for i in range(200):
            await orders.place(f"o-{i}", topic, {"order_id": f"o-{i}"}, key=f"customer-{i % 7}")
        await eventually(stats_say(orders.outbox, failing=1), what="the relay to record failed publishes")
        link.restore()

        # Then after recovery every event is delivered and handled exactly once
        await eventually(lambda: _true(len(handled) == 201), timeout=60, what="201 orders handled")
    assert set(handled.values()) == {1}
    assert (await orders.outbox.stats()).pending == 0


async def test_order_per_key_is_kept_across_an_outage(link, orders):
    # Given an ordered queue and a relay with small batches
    topic = link.name("orders")
    queue = await link.queue(topic, ordered=True)
    keys = [f"k{i}" for i in range(4)]
    relay = Relay(
        orders.outbox,
        Publisher(link.broker, settings=PUBLISH),
        RelaySettings(batch_size=7, poll_interval=0.2, initial_backoff=0.05, max_backoff=0.3),
    )
    for n in range(20):
        await orders.place(f"a-{n}", topic, {"key": keys[n % 4], "n": n}, key=keys[n % 4])

    # When the link is cut mid-stream and more events commit, then it comes back
    async with relay:
        await eventually(stats_say(orders.outbox, sent=7), what="a first batch sent")
        link.cut()
        for n in range(20, 40):
            await orders.place(f"a-{n}", topic, {"key": keys[n % 4], "n": n}, key=keys[n % 4])
        await eventually(stats_say(orders.outbox, failing=1), what="failed publishes recorded")
        link.restore()
        await eventually(stats_say(orders.outbox, pending=0), timeout=30, what="every row sent")

    # Then each key's events arrive in the order they were committed
    async with link.observer.consume(queue.name, prefetch=50) as consumer:
        got = await _distinct(consumer, 40)
    for key in keys:
        ns = [body["n"] for body in got if body["key"] == key]
        assert ns == sorted(ns) and len(ns) == 10


async def test_two_relays_on_postgresql_never_publish_the_same_row(link, pg_schema):
    # Given 300 committed rows over 10 keys and two relays, each with its own connection
    from tests.publishers.databases import PostgresOrders

    db = await PostgresOrders(pg_schema).start()
    topic = link.name("orders")
    await link.queue(topic)
    confirmed: list[str] = []
    placed: dict[str, list[str]] = {}
    for n in range(300):
        key = f"k{n % 10}"
        placed.setdefault(key, []).append(await db.place(f"o-{n}", topic, {"n": n}, key=key))
    relays = [
        Relay(
            db.open_outbox(),
            Publisher(Recording(link.broker, confirmed), settings=PUBLISH),
            RelaySettings(batch_size=20, poll_interval=0.2),
        )
        for _ in range(2)
    ]

    # When both run at once
    try:
        async with relays[0], relays[1]:
            await eventually(stats_say(db.outbox, pending=0), timeout=30, what="every row sent")
    finally:
        await db.close()
        for relay in relays:
            await relay.outbox.close()

    # Then every row was published once, and each key's rows in order
    assert len(confirmed) == len(set(confirmed)) == 300
    for ids in placed.values():
        assert [i for i in confirmed if i in set(ids)] == ids


async def test_a_relay_wakes_on_notify_instead_of_waiting_out_its_poll(pg_schema):
    from tests.publishers.databases import PostgresOrders

    db = await PostgresOrders(pg_schema).start()
    broker = MemoryBroker()
    published: list[str] = []
    relay = Relay(db.open_outbox(), Publisher(Recording(broker, published)), RelaySettings(poll_interval=120))
    try:
        async with relay:
            await relay.outbox.setup()
            await eventually(lambda: _true(relay.outbox._listener is not None), what="the relay listening")
            message_id = await db.place("o-1", "orders", {"n": 1})
            await eventually(lambda: _true(published == [message_id]), timeout=10, what="the row published")
    finally:
        await db.close()
        await relay.outbox.close()


async def test_sent_rows_are_pruned_after_the_retention_and_pending_ones_kept(orders):
    broker = MemoryBroker()
    for n in range(3):
        await orders.place(f"o-{n}", "orders", {"n": n})
    assert await Relay(orders.outbox, Publisher(broker)).drain() == 3
    await orders.place("o-late", "orders", {"n": 3})

    assert await orders.outbox.prune(older_than=3600) == 0
    assert await orders.outbox.prune(older_than=0) == 3
    s = await orders.outbox.stats()
    assert (s.pending, s.sent) == (1, 0) and s.oldest_pending_age is not None

    # and a running relay prunes on its own schedule
    relay = Relay(orders.outbox, Publisher(broker), RelaySettings(retention=0, prune_interval=0.05, poll_interval=0.05))
    async with relay:
        await eventually(stats_say(orders.outbox, pending=0), what="the last row sent")
        await eventually(stats_say(orders.outbox, sent=0), what="the sent row pruned")


async def _distinct(consumer, count: int) -> list[dict]:
    """Bodies of the first `count` distinct messages, in delivery order (duplicates skipped)."""
    import json

    seen: dict[str, dict] = {}

    async def take() -> None:
        async for d in consumer:
            seen.setdefault(d.message.id, json.loads(d.message.body))
            await d.ack()
            if len(seen) == count:
                return

    await asyncio.wait_for(take(), 30)
    return list(seen.values())


async def _true(value: bool) -> bool:
    return value


def test_sqlite_add_creates_the_table_on_first_use_and_a_rollback_loses_nothing_later(tmp_path):
    # Given an outbox whose table does not exist yet
    outbox = SqliteOutbox(str(tmp_path / "first.db"))
    conn = sqlite3.connect(tmp_path / "first.db")
    # When the first add's transaction rolls back, and the next one commits
    with pytest.raises(RuntimeError), conn:
        outbox.add(conn, "orders", {"n": 0})
        raise RuntimeError("the business write failed")
    with conn:
        kept = outbox.add(conn, "orders", {"n": 1})
    # Then only the committed event is in the table
    rows = conn.execute(f"SELECT message_id FROM {outbox.table}").fetchall()
    assert rows == [(kept,)]
    conn.close()


async def test_postgres_add_creates_the_table_on_first_use(pg_schema):
    # Given an outbox table that does not exist yet (in a schema of this test's own)
    table = f"{pg_schema}.mailbag_outbox"
    outbox = PostgresOutbox(PG_DSN, table=table)
    conn = await asyncpg.connect(PG_DSN)
    try:
        # When the first add runs inside the application's transaction, after its own write
        async with conn.transaction():
            await conn.execute(f"CREATE TABLE {pg_schema}.orders (id TEXT PRIMARY KEY)")
            first = await outbox.add(conn, "orders", {"n": 1})
        async with conn.transaction():
            second = await outbox.add(conn, "orders", {"n": 2})
        # Then the table exists and holds both events, in order, beside the business write
        rows = await conn.fetch(f"SELECT message_id FROM {table} ORDER BY seq")
        assert [r["message_id"] for r in rows] == [first, second]
        assert await conn.fetchval(f"SELECT count(*) FROM {pg_schema}.orders") == 0
    finally:
        await conn.close()


async def test_a_transactional_handler_writes_the_sqlite_outbox_in_its_own_transaction(tmp_path):
    # Given a transactional handler on the SQLite store that adds an event to an outbox in
    # the same file through `ctx.transaction` (an aiosqlite connection), and fails its first run
    path = str(tmp_path / "shop.db")
    outbox = SqliteOutbox(path)
    with sqlite3.connect(path) as conn:
        outbox.create_table(conn)
    store = SqliteStore(path)
    await store.setup()
    broker = MemoryBroker()
    app = App("shop")
    ids: list[str] = []

    @app.handler("orders", queue="ship.q", transactional=True, retry=RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def ship(payload: dict, ctx: Context) -> None:
        ids.append(await outbox.add(ctx.transaction, "shipped", {"order_id": payload["order_id"]}))
        if ctx.attempt == 1:
            raise ConnectionError("carrier timed out")

    # When an order is handled (the first run rolls back, the second commits)
    async with Worker(app, broker, store=store):
        await broker.publish("orders", [Message("orders", b'{"order_id": "o-1"}')])

        async def settled() -> bool:
            s = await broker.stats("ship.q")
            return (s.ready, s.in_flight, s.delayed) == (0, 0, 0)

        await eventually(settled, what="the order to be handled")
    # Then the outbox holds the event of the committed run only: written, not a silent no-op
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT message_id FROM mailbag_outbox").fetchall()
    assert len(ids) == 2 and rows == [(ids[1],)]
    await store.close()
    await broker.close()


async def test_add_refuses_what_is_not_a_sqlite_connection(tmp_path):
    outbox = SqliteOutbox(str(tmp_path / "x.db"))
    with pytest.raises(TypeError, match="sqlite3 connection or cursor, or an aiosqlite connection"):
        outbox.add(object(), "orders", {"n": 1})  # type: ignore[call-overload]
