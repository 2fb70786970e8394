"""A worker and a publisher on a quorum queue of a three-node RabbitMQ cluster, through
one URL naming every node: the node the worker is connected to stops, then (with it
back) the queue's leader stops. The checker (`workload.Verdict`) classifies every
message: every confirmed publish is handled (lost 0), no transactional effect is
applied twice, and the clients end up connected to a surviving node.

Known failure: in about half the runs on a loaded 2-core machine, no message is handled
for 90 s after a node stops, although the queue has a leader and a majority online: the
stall is on the client side (suspected: aio-pika restoring channels after a reconnect,
which has no timeout). Until that is found it runs in `make faults` only (marker
`cluster`), not in `make test`."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailbag.broker.rabbitmq import RabbitBroker, open_broker
from tests.conformance.env import eventually
from tests.faults.cluster import Cluster
from tests.faults.workload import Workload
from tests.names import run_name


@pytest.mark.cluster
@pytest.mark.timeout(600)  # three nodes boot in about a minute on a busy machine
async def test_clients_fail_over_when_their_node_and_then_the_quorum_leader_stop_and_lose_nothing(tmp_path):
    # Given a three-node cluster, a quorum queue, a worker whose transactional handler writes
    # a ledger row per message, and a publisher sending a numbered message every 20 ms
    cluster = Cluster(tmp_path / "cluster")
    began = time.monotonic()
    await asyncio.to_thread(cluster.start)
    print(f"cluster of {len(cluster.nodes)} up in {time.monotonic() - began:.1f}s")
    workload = Workload(run_name("cl"), tmp_path, kind="quorum")
    worker_broker = pub_broker = None
    try:
        worker_broker = await open_broker(cluster.url(), reconnect_interval=0.5)
        pub_broker = await open_broker(cluster.url(), reconnect_interval=0.5, publish_timeout=5)
        async with workload.running(worker_broker, pub_broker) as verdict:
            await workload.progress(30, timeout=60, what="30 messages handled")
            # When the node the worker is connected to stops (all the queue's members caught up)
            await _all_online(cluster, workload.queue)
            first = next(n for n in cluster.nodes if n.address == worker_broker.node)
            await asyncio.to_thread(cluster.stop_node, first)
            stopped = time.monotonic()
            await _progress(workload, cluster, worker_broker, "progress after the node stopped")
            took = time.monotonic() - stopped
            assert worker_broker.node != first.address
            print(f"worker failed over from {first.address} to {worker_broker.node}; progress again after {took:.1f}s")
            # (and is back, so the queue keeps a majority) and then the quorum leader stops
            await asyncio.to_thread(cluster.start_node, first)
            await _all_online(cluster, workload.queue)
            leader = await asyncio.to_thread(cluster.leader, workload.queue)
            await asyncio.to_thread(cluster.stop_node, leader)
            stopped = time.monotonic()
            await _progress(workload, cluster, worker_broker, "progress after the leader stopped")
            print(f"leader {leader.address} stopped; progress again after {time.monotonic() - stopped:.1f}s")
        # Then: lost 0 among confirmed publishes, no effect applied twice, clients on surviving nodes
        print(verdict())
        assert verdict().lost == [] and verdict().twice == []
        assert len(verdict().confirmed) > 100
        assert worker_broker.node != leader.address and pub_broker.node != leader.address
    finally:
        for b in (worker_broker, pub_broker):
            if b is not None:
                await b.close()
        await asyncio.to_thread(cluster.stop)


async def _progress(workload: Workload, cluster: Cluster, broker: RabbitBroker, what: str) -> None:
    """30 more messages handled within 90 s; if not, say where the client and the queue are."""
    try:
        await workload.progress(30, timeout=90, what=what)
    except AssertionError as exc:
        status = await asyncio.to_thread(cluster.queue_status, workload.queue)
        where = f"the worker is on {broker.node}; queue (leader, members, online): {status}"
        raise AssertionError(f"{exc}; {where}") from exc


async def _all_online(cluster: Cluster, queue: str) -> None:
    """Wait until every member of the quorum queue is online: stopping one before a
    restarted member has caught up would leave no majority, which is not the fault here."""

    async def online() -> bool:
        return await asyncio.to_thread(cluster.all_online, queue)

    await eventually(online, timeout=120, what=f"every member of {queue} to be online")
