"""The order flow on every broker: memory, RabbitMQ (this run's vhost, see
`tests.rabbitmq.service`) and SNS/SQS on a `moto_server`. Each test gets its own
name prefix and removes what it created."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from mailbag.broker import Broker, connect
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server
from tests.names import run_name
from tests.rabbitmq.service import amqp_url


@pytest.fixture(autouse=True)
def idempotency_in_memory(monkeypatch):
    """The services are idempotent on their own; keep the workers' records in memory
    instead of a file in the working directory."""
    monkeypatch.setenv("MAILBAG_IDEMPOTENCY_URL", "memory://")


@dataclass
class Target:
    name: str
    url: str
    prefix: str
    open: Callable[[], Awaitable[Broker]]


@asynccontextmanager
async def target(name: str) -> AsyncIterator[Target]:
    prefix = f"{run_name('f')}-"
    if name == "memory":
        url = "memory://"
    elif name == "rabbitmq":
        url = amqp_url()
    else:
        url = f"sqs://?region={REGION}&endpoint={shared_moto_server()}&wait=1"
    if name != "sqs":
        yield Target(name, url, prefix, lambda: connect(url))
        return
    with dummy_aws_credentials():
        try:
            yield Target(name, url, prefix, lambda: connect(url))
        finally:
            await asyncio.to_thread(delete_prefixed, shared_moto_server(), prefix)


@pytest.fixture(params=["memory", "rabbitmq", "sqs"])
async def on(request) -> AsyncIterator[Target]:
    async with target(request.param) as t:
        yield t
