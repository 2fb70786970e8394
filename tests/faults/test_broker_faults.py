"""The broker failing under a running worker and publisher: its app stopped and started
mid-stream (a throwaway node of our own), and connections reset through a proxy again
and again. The checker (`workload.Verdict`): every confirmed publish handled (lost 0),
no transactional effect applied twice."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailbag.broker.rabbitmq import open_broker
from tests.faults.cluster import Cluster
from tests.faults.workload import Workload
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared


@pytest.mark.timeout(300)
async def test_broker_stop_app_and_start_app_mid_stream_lose_nothing(tmp_path):
    # Given a worker and a publisher on a throwaway node's quorum queue, messages flowing
    node = Cluster(tmp_path / "node", size=1)
    await asyncio.to_thread(node.start)
    workload = Workload(run_name("sa"), tmp_path, kind="quorum")
    worker_broker = pub_broker = None
    try:
        worker_broker = await open_broker(node.url(), reconnect_interval=0.5)
        pub_broker = await open_broker(node.url(), reconnect_interval=0.5, publish_timeout=5)
        async with workload.running(worker_broker, pub_broker) as verdict:
            await workload.progress(30, timeout=60, what="30 messages handled")
            # When the broker's app stops for a while mid-stream, and starts again
            await asyncio.to_thread(node.ctl, node.nodes[0], "stop_app")
            await asyncio.to_thread(node.ctl, node.nodes[0], "start_app")
            restarted = time.monotonic()
            await workload.progress(30, timeout=90, what="progress after start_app")
            print(f"progress again {time.monotonic() - restarted:.1f}s after start_app")
        # Then nothing confirmed is lost and nothing is applied twice
        print(verdict())
        assert verdict().lost == [] and verdict().twice == []
    finally:
        for b in (worker_broker, pub_broker):
            if b is not None:
                await b.close()
        await asyncio.to_thread(node.stop)


async def test_connection_resets_mid_stream_lose_nothing(tmp_path):
    # Given a worker and a publisher reaching the shared broker through a proxy
    workload = Workload(run_name("rs"), tmp_path)
    async with CuttingProxy(HOST, PORT) as proxy:
        url = amqp_url(port=proxy.port)
        worker_broker = await open_broker(url, reconnect_interval=0.2)
        pub_broker = await open_broker(url, reconnect_interval=0.2, publish_timeout=5)
        try:
            async with workload.running(worker_broker, pub_broker) as verdict:
                # When every connection is reset five times, with messages flowing in between
                for _ in range(5):
                    await workload.progress(20, timeout=60, what="progress before a reset")
                    proxy.cut()
                await workload.progress(20, timeout=60, what="progress after the last reset")
            # Then nothing confirmed is lost and nothing is applied twice
            print(verdict())
            assert verdict().lost == [] and verdict().twice == []
        finally:
            await worker_broker.close()
            await pub_broker.close()
            await remove_declared(worker_broker)
