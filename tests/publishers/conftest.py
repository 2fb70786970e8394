"""Fixtures for publisher and outbox tests: a broker whose link can be cut, on every
backend in `LINKS` (memory first; RabbitMQ and SNS/SQS join when their adapters
exist), and a PostgreSQL schema of each test's own. A service that is down fails the
test with the command that starts it."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from tests.publishers.databases import PG_DSN, orders_db
from tests.publishers.links import Link, amqp_link, memory_link, sqs_link

START_SERVICES = "start it with `bash scripts/services.sh`"

LINKS = {"memory": memory_link}
if importlib.util.find_spec("mailbag.broker.rabbitmq") is not None:
    LINKS["amqp"] = amqp_link
if importlib.util.find_spec("mailbag.broker.sqs") is not None:
    LINKS["sqs"] = sqs_link


@pytest.fixture(params=list(LINKS), ids=list(LINKS))
async def link(request) -> AsyncIterator[Link]:
    async with LINKS[request.param]() as opened:
        yield opened


@asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema of its own in database `test`, dropped with its tables after."""
    import asyncpg

    schema = f"mb_{uuid.uuid4().hex[:10]}"
    try:
        conn = await asyncpg.connect(PG_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at 127.0.0.1:5432 ({exc}); {START_SERVICES}", pytrace=False)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        yield schema
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    async with fresh_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgres"])
async def orders(request, tmp_path):
    """The order service's database, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        async with orders_db("sqlite", tmp_path, None) as db:
            yield db
        return
    async with fresh_schema() as schema, orders_db("postgres", tmp_path, schema) as db:
        yield db
