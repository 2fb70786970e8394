"""A worker and a publisher on a quorum queue of a three-node RabbitMQ cluster, through
one URL naming every node: the node the worker is connected to stops, then (with it
back) the queue's leader stops. A checker classifies every message: every confirmed
publish is handled (lost 0), no transactional effect is applied twice, and the clients
end up connected to a surviving node."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from mailbag.broker import RetryPolicy
from mailbag.broker.rabbitmq import open_broker
from mailbag.publishers import Publisher, PublishError, PublisherSettings
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.sqlite import SqliteStore
from tests.conformance.env import eventually
from tests.faults.cluster import Cluster
from tests.names import run_name


@pytest.mark.timeout(600)  # three nodes boot in about a minute on a busy machine
async def test_clients_fail_over_when_their_node_and_then_the_quorum_leader_stop_and_lose_nothing(tmp_path):
    # Given a three-node cluster, a quorum queue, a worker whose transactional handler writes
    # a ledger row per message, and a publisher sending a numbered message every 20 ms
    cluster = Cluster(tmp_path / "cluster")
    began = time.monotonic()
    await asyncio.to_thread(cluster.start)
    print(f"cluster of {len(cluster.nodes)} up in {time.monotonic() - began:.1f}s")
    stem = run_name("cl")
    topic, queue = f"{stem}.orders", f"{stem}.orders.q"
    app = App("cluster")

    retry = RetryPolicy(max_attempts=20, initial_delay=0.2)

    @app.handler(topic, queue=queue, kind="quorum", transactional=True, retry=retry)
    async def book(payload: dict, ctx: Context) -> None:
        await ctx.transaction.execute("INSERT INTO ledger VALUES (?)", (payload["n"],))

    store = SqliteStore(tmp_path / "idem.sqlite3")
    await store.setup()
    async with store.connection() as conn:
        await conn.execute("CREATE TABLE ledger (n INTEGER NOT NULL)")

    async def ledger() -> list[int]:
        async with store.connection() as conn:
            return [r[0] for r in await store.fetch(conn, "SELECT n FROM ledger")]

    worker_broker = pub_broker = None
    try:
        worker_broker = await open_broker(cluster.url(), reconnect_interval=0.5)
        pub_broker = await open_broker(cluster.url(), reconnect_interval=0.5, publish_timeout=5)
        await worker_broker.declare(app.topology)
        publisher = Publisher(pub_broker, settings=PublisherSettings(deadline=20, attempt_timeout=5))
        confirmed: list[int] = []
        unconfirmed: list[int] = []
        producing = asyncio.Event()
        producing.set()

        async def produce() -> None:
            n = 0
            while producing.is_set():
                try:
                    await publisher.publish(topic, {"n": n}, message_id=f"{stem}-{n}")
                    confirmed.append(n)
                except PublishError:
                    unconfirmed.append(n)
                n += 1
                await asyncio.sleep(0.02)

        async def handled_beyond(count: int) -> bool:
            return len(set(await ledger())) >= count

        async with Worker(app, worker_broker, store=store, concurrency=8):
            producer = asyncio.create_task(produce())
            await eventually(lambda: handled_beyond(30), timeout=60, what="30 messages handled")
            # When the node the worker is connected to stops
            first = next(n for n in cluster.nodes if n.address == worker_broker.node)
            await asyncio.to_thread(cluster.stop_node, first)
            stopped = time.monotonic()
            seen = len(set(await ledger()))
            await eventually(lambda: handled_beyond(seen + 30), timeout=90, what="progress after the node stopped")
            assert worker_broker.node != first.address
            print(
                f"worker failed over from {first.address} to {worker_broker.node} in {time.monotonic() - stopped:.1f}s"
            )
            # (and is back, so the queue keeps a majority) and then the quorum leader stops
            await asyncio.to_thread(cluster.start_node, first)
            leader = await asyncio.to_thread(cluster.leader, queue)
            await asyncio.to_thread(cluster.stop_node, leader)
            stopped = time.monotonic()
            seen = len(set(await ledger()))
            await eventually(lambda: handled_beyond(seen + 30), timeout=90, what="progress after the leader stopped")
            print(f"leader {leader.address} stopped; progress again after {time.monotonic() - stopped:.1f}s")
            producing.clear()
            await producer

            async def all_confirmed_handled() -> bool:
                return set(confirmed) <= set(await ledger())

            await eventually(all_confirmed_handled, timeout=90, what="every confirmed message to be handled")
        # Then: lost 0 among confirmed publishes, no effect applied twice, clients on surviving nodes
        rows = await ledger()
        lost = sorted(set(confirmed) - set(rows))
        twice = sorted(n for n, times in Counter(rows).items() if times > 1)
        print(
            f"published {len(confirmed) + len(unconfirmed)}, confirmed {len(confirmed)}, "
            f"unconfirmed {len(unconfirmed)} (of which handled {len(set(unconfirmed) & set(rows))}); "
            f"lost {len(lost)}, applied twice {len(twice)}"
        )
        assert lost == [] and twice == []
        assert len(confirmed) > 100
        assert worker_broker.node != leader.address and pub_broker.node != leader.address
    finally:
        for b in (worker_broker, pub_broker):
            if b is not None:
                await b.close()
        await store.close()
        await asyncio.to_thread(cluster.stop)
