"""Fixtures for the worker tests: every idempotency store on its real backend (Redis,
PostgreSQL, DynamoDB on moto in process), each isolated by a unique name and cleaned up.
A missing service fails the test with the command that starts it."""

from __future__ import annotations

import socket
import uuid
from contextlib import asynccontextmanager

import pytest

from mailbag.workers.stores import open_store

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


def _worker_backends() -> list:
    """The memory broker on real time, and the conformance suite's RabbitMQ (classic)
    and SQS (moto in process) backends: the brokers the runtime tests run on."""
    from mailbag.broker.memory import MemoryBroker
    from tests.conformance import backend_rabbitmq, backend_sqs
    from tests.conformance.env import Backend, Env, Features

    @asynccontextmanager
    async def memory():
        broker = MemoryBroker()
        try:
            yield Env(broker, Features(), _real_time)
        finally:
            await broker.close()

    wanted = {"rabbitmq-classic", "sqs-moto"}
    others = [b for m in (backend_rabbitmq, backend_sqs) for b in m.BACKENDS if b.name in wanted]
    return [Backend("memory", memory), *others]


async def _real_time(seconds: float) -> None:
    """Time passes on its own: the tests wait on outcomes."""


WORKER_BACKENDS = _worker_backends()


@pytest.fixture(params=WORKER_BACKENDS, ids=[b.name for b in WORKER_BACKENDS])
async def env(request):
    """A broker from `WORKER_BACKENDS` (`env.broker`), with unique names (`env.name`)
    and the shortest retry delay it honours (`env.features.min_delay`)."""
    if request.param.name.startswith("rabbitmq"):
        require("rabbitmq")
    async with request.param.open() as e:
        yield e


async def terminate_backends(application_name: str) -> int:
    """Kill every PostgreSQL backend of `application_name` (a name only the calling test
    uses), as a failover or a restart would; how many."""
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", application_name
        )
    finally:
        await admin.close()
    return len(rows)


@asynccontextmanager
async def postgres_store_with_ledger():
    """A PostgreSQL store connecting under an application name of its own, and a ledger
    table `(n INT)` beside it: (store, application name, ledger); both tables dropped after."""
    require("postgres")
    name, table, ledger = unique("mbstore"), unique("idem"), unique("ledger")
    store = await open_store(f"{POSTGRES_URL}?table={table}&application_name={name}")
    try:
        async with store.connection() as conn:
            await conn.execute(f"CREATE TABLE {ledger} (n INT NOT NULL)")
        yield store, name, ledger
    finally:
        async with store.connection() as conn:
            await conn.execute(f"DROP TABLE IF EXISTS {ledger}")
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await store.close()
