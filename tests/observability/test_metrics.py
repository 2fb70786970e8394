"""Prometheus metrics and probes of a running worker, scraped over HTTP, on the memory
broker and on the real RabbitMQ."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from mailbag.broker import Message, Topology
from mailbag.broker.memory import MemoryBroker
from mailbag.broker.rabbitmq import open_broker
from mailbag.cli import main
from mailbag.publishers.outbox import open_outbox
from mailbag.workers.metrics import Metrics
from tests.conformance.env import eventually
from tests.observability.conftest import get, observed, opened, sample, scrape
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared


@pytest.mark.parametrize("backend", ["memory", "rabbitmq"])
async def test_counters_move_with_what_the_worker_does(backend):
    async with opened(backend) as broker, observed(broker, backend) as obs:
        queue, handler = obs.topic, "build.<locals>.job"
        labels = {"queue": queue, "handler": handler}

        async def scraped(name: str, value: float, **extra: str) -> bool:
            return sample(await scrape(obs.port), name, **labels, **extra) == value

        # Given nothing handled yet, the queue is polled and empty
        samples = await scrape(obs.port)
        assert sample(samples, "mailbag_messages_handled_total", **labels) == 0
        await eventually(
            lambda: _has(obs.port, "mailbag_queue_messages", queue=queue, state="ready"), what="a depth poll"
        )

        # When a message succeeds, then one fails its first attempt, then a poison one arrives
        await obs.publish(b'{"n": 1}')
        await eventually(lambda: scraped("mailbag_messages_handled_total", 1), what="handled 1")
        await obs.publish(b'{"fail_first": true}')
        await eventually(lambda: scraped("mailbag_messages_handled_total", 2), what="handled 2 after a retry")
        await obs.publish(b"not json")
        await eventually(lambda: scraped("mailbag_messages_dead_lettered_total", 1), what="dead-lettered 1")

        # Then each counter says so, the handler ran three times, none is running now,
        # and the polled depth shows the dead letter
        samples = await scrape(obs.port)
        assert sample(samples, "mailbag_messages_retried_total", **labels) == 1
        assert sample(samples, "mailbag_messages_failed_total", **labels) == 1
        assert sample(samples, "mailbag_handler_duration_seconds_count", **labels) == 3
        assert sample(samples, "mailbag_messages_in_flight", queue=queue) == 0
        assert sample(samples, "mailbag_broker_up") == 1
        await eventually(
            lambda: _has(obs.port, "mailbag_queue_messages", 1, queue=queue, state="dead_letters"), what="DLQ depth 1"
        )


async def _has(port: int, name: str, value: float | None = None, **labels: str) -> bool:
    samples = await scrape(port)
    key = (name, tuple(sorted(labels.items())))
    return key in samples and (value is None or samples[key] == value)


async def test_readyz_is_ready_while_consuming_and_503_once_stop_begins(capsys):
    gate = asyncio.Event()
    async with opened("memory") as broker, observed(broker, "memory", gate) as obs:
        assert await asyncio.to_thread(get, obs.port, "/readyz") == (200, "ready\n")
        # Given a handler in flight
        await obs.publish(b'{"block": true}')
        await eventually(
            lambda: _has(obs.port, "mailbag_messages_in_flight", 1, queue=obs.topic), what="a handler in flight"
        )
        # When the worker starts stopping (it waits for the handler)
        stopping = asyncio.create_task(obs.worker.stop())
        await eventually(lambda: _status(obs.port, "/readyz", 503), what="/readyz 503 during shutdown")
        # Then the process is still alive for the liveness probe, and `mailbag health` says not ready
        assert await asyncio.to_thread(get, obs.port, "/healthz") == (200, "alive\n")
        assert await asyncio.to_thread(main, ["health", "--port", str(obs.port)]) == 1
        assert capsys.readouterr().err == f"mailbag: not ready: http://127.0.0.1:{obs.port}/readyz answered 503\n"
        gate.set()
        await stopping
        assert (await asyncio.to_thread(get, obs.port, "/nope"))[0] == 404


async def _status(port: int, path: str, status: int) -> bool:
    return (await asyncio.to_thread(get, port, path))[0] == status


async def test_readyz_is_503_while_rabbitmq_is_unreachable_and_200_once_it_is_back():
    amqp_url()  # fails the test, saying how to start RabbitMQ, when it is down
    async with CuttingProxy(HOST, PORT) as proxy:
        broker = await open_broker(amqp_url(port=proxy.port), reconnect_interval=0.2)
        try:
            async with observed(broker, "rabbitmq") as obs:
                await eventually(lambda: _status(obs.port, "/readyz", 200), what="ready")
                # When the network to RabbitMQ fails and it stays unreachable
                proxy.refuse = True
                proxy.cut()
                await eventually(lambda: _status(obs.port, "/readyz", 503), what="/readyz 503 while disconnected")
                assert (await scrape(obs.port))[("mailbag_broker_up", ())] == 0
                # Then the broker counts as up, and the worker ready, once it is back
                proxy.refuse = False
                await eventually(lambda: _has(obs.port, "mailbag_broker_up", 1), timeout=30, what="broker up again")
                await eventually(lambda: _status(obs.port, "/readyz", 200), timeout=30, what="ready again")
        finally:
            await broker.close()
            await remove_declared(broker)


async def test_outbox_backlog_is_polled(tmp_path):
    # Given an outbox with two committed rows, watched by the metrics
    outbox = open_outbox(f"sqlite:///{tmp_path}/outbox.db")
    conn = sqlite3.connect(tmp_path / "outbox.db")
    with conn:
        outbox.add(conn, "orders", {"n": 1})
        outbox.add(conn, "orders", {"n": 2})
    conn.close()
    async with outbox, opened("memory") as broker:
        metrics = Metrics()
        metrics.watch_outbox(outbox)
        # When the metrics poll
        await metrics.poll_once(broker, [])
        # Then the backlog is exported per outbox table
        assert metrics.registry.get_sample_value("mailbag_outbox_pending", {"outbox": outbox.table}) == 2
        assert metrics.registry.get_sample_value("mailbag_outbox_failing", {"outbox": outbox.table}) == 0
        assert metrics.registry.get_sample_value("mailbag_outbox_oldest_pending_seconds", {"outbox": outbox.table}) > 0


async def test_publishes_no_queue_took_are_polled_per_topic():
    # Given a topic nobody subscribes to, published to three times
    broker = MemoryBroker()
    await broker.declare(Topology(topics=("nobody",)))
    for _ in range(3):
        await broker.publish("nobody", [Message("nobody", b"{}")])
    # When the metrics poll the broker, Then the count is exported under the topic
    metrics = Metrics()
    await metrics.poll_once(broker, [])
    assert metrics.registry.get_sample_value("mailbag_unroutable_published", {"topic": "nobody"}) == 3
    await broker.close()
