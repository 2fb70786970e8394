"""Fixtures shared across the test packages: moto's AWS in this process, plain boto3
clients to look at what the code under test made there, and a RabbitMQ whose delay
levels pass messages when the run starts, left as the run found it: the names this run declared
are deleted at the end, and so are the messages delayed for them, no others."""

import asyncio
import sys

import boto3
import pytest
from moto import mock_aws

from tests.moto_server import REGION, dummy_aws_credentials
from tests.names import RUN_PREFIX
from tests.rabbitmq.service import amqp_url, listening, take_orphans, vhost_names, wait_for_delay_levels


@pytest.fixture
def aws():
    """moto in process for the whole test (worker threads included), with credentials
    it accepts."""
    with dummy_aws_credentials(), mock_aws():
        yield


@pytest.fixture
def sqs(aws):
    return boto3.client("sqs", region_name=REGION)


@pytest.fixture
def sns(aws):
    return boto3.client("sns", region_name=REGION)


async def _delete(queues: set[str], exchanges: set[str]) -> None:
    import aio_pika

    async with await aio_pika.connect(amqp_url(), timeout=10) as connection:
        channel = await connection.channel()
        for name in sorted(queues):
            await channel.queue_delete(name)
        for name in sorted(exchanges):
            await channel.exchange_delete(name)


def delete_run_names(prefix: str) -> None:
    """Delete the queues and exchanges on the test vhost whose names start with `prefix`
    (one run's names), and nothing else: other sessions may share the vhost."""
    found = vhost_names()
    if found is None:
        return
    queues, exchanges = ({n for n in names if n.startswith(prefix)} for names in found)
    if queues or exchanges:
        asyncio.run(_delete(queues, exchanges))


def pytest_sessionstart(session):
    """Before any test (and outside the per-test timeout): the quorum delay levels pass
    messages (`wait_for_delay_levels`: minutes, once, on a vhost an earlier version left
    orphans in). A test that needs RabbitMQ fails on its own when it is not running."""
    if not listening():
        return
    try:
        waited = asyncio.run(wait_for_delay_levels())
    except Exception as exc:  # the tests that need the levels fail and say how late their retries were
        print(f"\nthe quorum delay levels do not pass messages: {exc!r}", file=sys.stderr)
        return
    if waited > 10:
        print(f"\nthe quorum delay levels passed messages again after {waited:.0f}s", file=sys.stderr)


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_left_as_found():
    """Deletes the RabbitMQ queues and exchanges this run left behind, only names with
    the run's prefix, and the messages delayed for them that their deletion orphaned.
    Tests remove what they declare, but one that stops half way leaves its queues behind,
    and a node that collects hundreds of queues per run slows until it stops answering."""
    yield
    try:
        delete_run_names(RUN_PREFIX)
        asyncio.run(take_orphans(RUN_PREFIX))
    except Exception as exc:  # hygiene only: the run's results stand
        print(f"\nleft RabbitMQ queues or orphans behind: {exc!r}", file=sys.stderr)
