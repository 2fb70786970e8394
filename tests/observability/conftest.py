"""What the observability tests share: a worker with metrics and its endpoints on a
free port of 127.0.0.1 (memory or RabbitMQ), and reading those endpoints over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.error import HTTPError
from urllib.request import urlopen

from prometheus_client.parser import text_string_to_metric_families

from mailbag.broker import Broker, Message
from mailbag.broker.memory import MemoryBroker
from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import Worker, WorkerSettings
from mailbag.workers.endpoints import Endpoints
from mailbag.workers.metrics import Metrics
from tests.moto_server import moto_server  # noqa: F401  (fixture for the SNS/SQS tests)
from tests.names import run_name
from tests.observability import obs_app
from tests.rabbitmq.service import amqp_url, remove_declared

#: retry delay per backend: RabbitMQ's TTL retry queues are real time, SQS visibility
#: timeouts whole seconds
DELAYS = {"memory": 0.05, "rabbitmq": 0.2, "sqs": 1.0}


def get(port: int, path: str) -> tuple[int, str]:
    """Status and body of GET http://127.0.0.1:`port``path` (blocking: call in a thread)."""
    try:
        with urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except HTTPError as exc:
        return exc.code, exc.read().decode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics serves, keyed by name and sorted labels."""
    status, text = await asyncio.to_thread(get, port, "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    """One sample's value, 0 when it has not been recorded yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@asynccontextmanager
async def opened(backend: str) -> AsyncIterator[Broker]:
    if backend == "memory":
        async with MemoryBroker() as broker:
            yield broker
        return
    broker = await open_broker(amqp_url())
    try:
        yield broker
    finally:
        await broker.close()
        await remove_declared(broker)


class Observed:
    """A running worker of `obs_app` with metrics, its endpoints' port, and helpers."""

    def __init__(self, broker: Broker, worker: Worker, endpoints: Endpoints, topic: str) -> None:
        self.broker = broker
        self.worker = worker
        self.endpoints = endpoints
        self.topic = topic
        self.port = endpoints.port

    async def publish(self, body: bytes) -> Message:
        message = Message(self.topic, body, content_type="application/json")
        await self.broker.publish(self.topic, [message])
        return message


@asynccontextmanager
async def observed(broker: Broker, backend: str, gate: asyncio.Event | None = None) -> AsyncIterator[Observed]:
    """`obs_app` running on `broker` with metrics polled every 0.5 s, served on a free port."""
    run = run_name("o")
    app = obs_app.build(run, DELAYS[backend], gate)
    metrics = Metrics()
    settings = WorkerSettings(idempotency_url="memory://", metrics_interval=0.5, retry_jitter=False, grace_period=5)
    worker = Worker(app, broker, settings=settings, metrics=metrics)
    endpoints = Endpoints(metrics.registry, worker, "127.0.0.1", 0)
    with endpoints:
        await worker.start()
        try:
            yield Observed(broker, worker, endpoints, obs_app.topic(run))
        finally:
            if gate is not None:
                gate.set()
            await worker.stop()
