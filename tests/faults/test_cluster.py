"""Workers and publishers on a quorum queue of a three-node RabbitMQ cluster, through one
URL naming every node, while nodes stop or crash. The checker (`workload.Verdict`)
classifies every message: every confirmed publish is handled (lost 0), no transactional
effect is applied twice, and the clients end up connected to a surviving node.

The cluster boots once for the module (about a minute); each test starts again what the
one before it stopped. Every wait has a deadline below the test's timeout, so a failing
test fails with the state of the queue, and its cleanup (brokers, store, cluster) runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from mailbag.broker.rabbitmq import RabbitBroker, open_broker
from tests.conformance.env import eventually
from tests.faults.cluster import Cluster, Node
from tests.faults.workload import Workload
from tests.names import run_name

#: the longest a publisher may go without a confirm after its node crashed
CONFIRMS_RESUME_WITHIN = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path_factory.mktemp("cluster"))
    began = time.monotonic()
    try:
        nodes.start()
        print(f"cluster of {len(nodes.nodes)} up in {time.monotonic() - began:.1f}s")
        yield nodes
    finally:
        nodes.stop()


@pytest.mark.cluster
@pytest.mark.timeout(600)  # the first test boots the cluster too (up to 2 minutes seen)
async def test_a_publisher_whose_node_leads_the_queue_confirms_again_soon_after_that_node_is_killed(
    cluster, tmp_path, caplog
):
    # Given a quorum queue led by node 1, a publisher connected to node 1 and a worker to node 2
    await asyncio.to_thread(cluster.restart_stopped)
    victim, survivor, _ = cluster.nodes
    workload = Workload(run_name("kl"), tmp_path, kind="quorum")
    brokers = await _open(cluster, publisher_on=victim, worker_on=survivor)
    began = time.monotonic()
    try:
        pub_broker, worker_broker = brokers
        await pub_broker.declare(workload.app.topology)  # a quorum queue's leader starts where it is declared
        leader = await asyncio.to_thread(cluster.leader, workload.queue)
        assert leader == victim and pub_broker.node == victim.address, (leader.address, pub_broker.node)
        async with workload.running(worker_broker, pub_broker) as verdict:
            await workload.progress(30, timeout=60, what="30 messages handled")
            await _all_online(cluster, workload.queue)
            # When node 1 is killed with -9 (publisher, connection and queue leader at once)
            loop = asyncio.get_running_loop()
            before = loop.time()
            await asyncio.to_thread(cluster.kill_node, victim)
            killed = loop.time()  # the VM is gone: what is sent from now on needs a survivor

            async def confirmed_again() -> bool:
                return workload.first_confirm_after(killed) is not None

            await _within(confirmed_again, 60, "a confirm after the kill", workload, cluster, pub_broker)
            resumed = workload.first_confirm_after(killed)
            assert resumed is not None
            pause = resumed - killed
            await _progress(workload, cluster, worker_broker, "progress after the kill")
            gap = workload.longest_gap(before)
        # Then confirms resume within 10 s on a surviving node, and nothing confirmed is lost
        print(f"kill -9 of {victim.address}: a publish begun after it confirmed {pause:.1f}s later")
        print(verdict())
        fresh = sum("going on with a fresh one" in r.getMessage() for r in caplog.records)
        print(
            f"figures: pause={pause:.1f}s longest-gap={gap:.1f}s lost={len(verdict().lost)} "
            f"fresh-channels={fresh} took={time.monotonic() - began:.0f}s"
        )
        assert pause < CONFIRMS_RESUME_WITHIN, f"no confirm for {pause:.1f}s after the kill"
        assert gap < CONFIRMS_RESUME_WITHIN, f"no confirm for {gap:.1f}s around the kill"
        assert verdict().lost == [] and verdict().twice == []
        assert pub_broker.node != victim.address
    finally:
        await _close(brokers)


@pytest.mark.cluster
@pytest.mark.timeout(600)
async def test_clients_fail_over_when_their_node_and_then_the_quorum_leader_stop_and_lose_nothing(cluster, tmp_path):
    # Given a quorum queue, a worker whose transactional handler writes a ledger row per
    # message, and a publisher sending a numbered message every 20 ms, all on node 1
    await asyncio.to_thread(cluster.restart_stopped)
    workload = Workload(run_name("cl"), tmp_path, kind="quorum")
    brokers = await _open(cluster, publisher_on=cluster.nodes[0], worker_on=cluster.nodes[0])
    began = time.monotonic()
    try:
        pub_broker, worker_broker = brokers
        async with workload.running(worker_broker, pub_broker) as verdict:
            await workload.progress(30, timeout=60, what="30 messages handled")
            # When the node the worker is connected to stops (all the queue's members caught up)
            await _all_online(cluster, workload.queue)
            first = next(n for n in cluster.nodes if n.address == worker_broker.node)
            await asyncio.to_thread(cluster.stop_node, first)
            stopped = time.monotonic()
            await _progress(workload, cluster, worker_broker, "progress after the node stopped")
            node_pause = time.monotonic() - stopped
            assert worker_broker.node != first.address
            print(f"worker failed over from {first.address} to {worker_broker.node}; progress after {node_pause:.1f}s")
            # (and is back, so the queue keeps a majority) and then the quorum leader stops
            await asyncio.to_thread(cluster.start_node, first)
            await _all_online(cluster, workload.queue)
            leader = await asyncio.to_thread(cluster.leader, workload.queue)
            await asyncio.to_thread(cluster.stop_node, leader)
            stopped = time.monotonic()
            await _progress(workload, cluster, worker_broker, "progress after the leader stopped")
            leader_pause = time.monotonic() - stopped
            print(f"leader {leader.address} stopped; progress again after {leader_pause:.1f}s")
        # Then: lost 0 among confirmed publishes, no effect applied twice, clients on surviving nodes
        print(verdict())
        print(
            f"figures: node-stop pause={node_pause:.1f}s leader-stop pause={leader_pause:.1f}s "
            f"lost={len(verdict().lost)} took={time.monotonic() - began:.0f}s"
        )
        assert verdict().lost == [] and verdict().twice == []
        assert len(verdict().confirmed) > 100
        assert worker_broker.node != leader.address and pub_broker.node != leader.address
    finally:
        await _close(brokers)


async def _open(cluster: Cluster, *, publisher_on: Node, worker_on: Node) -> tuple[RabbitBroker, RabbitBroker]:
    publisher = await open_broker(cluster.url(first=publisher_on), reconnect_interval=0.5, publish_timeout=5)
    try:
        worker = await open_broker(cluster.url(first=worker_on), reconnect_interval=0.5)
    except BaseException:
        await publisher.close()
        raise
    return publisher, worker


async def _close(brokers: tuple[RabbitBroker, RabbitBroker]) -> None:
    for broker in brokers:
        async with asyncio.timeout(30):  # each close step is bounded; this is the backstop
            await broker.close()


async def _within(check, timeout: float, what: str, workload: Workload, cluster: Cluster, broker: RabbitBroker) -> None:
    """`check` true within `timeout` s; if not, say where the client and the queue are."""
    try:
        await eventually(check, timeout=timeout, what=what)
    except AssertionError as exc:
        status = await asyncio.to_thread(cluster.queue_status, workload.queue)
        where = f"the client is on {broker.node}; queue (leader, members, online): {status}"
        raise AssertionError(f"{exc}; {where}") from exc


async def _progress(workload: Workload, cluster: Cluster, broker: RabbitBroker, what: str) -> None:
    """30 more messages handled within 90 s; if not, say where the worker and the queue are."""
    goal = await workload.handled() + 30

    async def reached() -> bool:
        return await workload.handled() >= goal

    await _within(reached, 90, what, workload, cluster, broker)


async def _all_online(cluster: Cluster, queue: str) -> None:
    """Wait until every member of the quorum queue is online: stopping one before a
    restarted member has caught up would leave no majority, which is not the fault here."""

    async def online() -> bool:
        return await asyncio.to_thread(cluster.all_online, queue)

    await eventually(online, timeout=120, what=f"every member of {queue} to be online")
