"""Fixtures for the worker tests: every idempotency store on its real backend (Redis,
PostgreSQL, DynamoDB on moto in process), each isolated by a unique name and cleaned up.
A missing service fails the test with the command that starts it."""

from __future__ import annotations

import socket
import uuid
from contextlib import asynccontextmanager

import pytest

from workers.stores import open_store

SERVICES = {"redis": ("Redis", 6379), "postgres": ("PostgreSQL", 5432), "rabbitmq": ("RabbitMQ", 5672)}

STORE_KINDS = ["memory", "sqlite", "redis", "postgres", "dynamodb"]
TRANSACTIONAL_KINDS = ["sqlite", "postgres"]

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def require(service: str) -> None:
    """Fail (never skip) when a service the test needs is not listening."""
    name, port = SERVICES[service]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(
            f"{name} is not reachable on 127.0.0.1:{port}; start it with `scripts/services.sh` (or `make test`)",
            pytrace=False,
        )


def unique(base: str) -> str:
    return f"{base}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def aws(monkeypatch):
    """moto's AWS in this process, with fake credentials."""
    from moto import mock_aws

    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield


@asynccontextmanager
async def opened_store(kind: str, tmp_path, request):
    """A fresh store of `kind`, cleaned up and closed afterwards."""
    cleanup = None
    if kind == "memory":
        store = await open_store("memory://")
    elif kind == "sqlite":
        store = await open_store(f"sqlite:///{tmp_path}/idem.sqlite3")
    elif kind == "redis":
        require("redis")
        prefix = unique("mailbag-test") + ":"
        store = await open_store(f"redis://127.0.0.1:6379/0?prefix={prefix}")

        async def cleanup():
            keys = [k async for k in store.client.scan_iter(f"{prefix}*")]
            if keys:
                await store.client.delete(*keys)

    elif kind == "postgres":
        require("postgres")
        table = unique("idem")
        store = await open_store(f"{POSTGRES_URL}?table={table}")

        async def cleanup():
            async with store.connection() as conn:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")

    elif kind == "dynamodb":
        request.getfixturevalue("aws")
        store = await open_store(f"dynamodb://{unique('idem')}?region=us-east-1")
    else:
        raise ValueError(kind)
    try:
        yield store
    finally:
        if cleanup is not None:
            await cleanup()
        await store.close()


@pytest.fixture(params=STORE_KINDS)
async def store(request, tmp_path):
    async with opened_store(request.param, tmp_path, request) as s:
        yield s


@pytest.fixture(params=TRANSACTIONAL_KINDS)
async def transactional_store(request, tmp_path):
    async with opened_store(request.param, tmp_path, request) as s:
        yield s
