"""Fixtures for the SNS/SQS adapter's own tests: moto in process, a broker with a
unique prefix, and plain boto3 clients to look at what the broker made."""

import uuid

import boto3
import pytest
from moto import mock_aws

from broker.sqs import open_broker
from tests.moto_server import REGION, moto_server  # noqa: F401  (re-exported fixture)


@pytest.fixture
def aws():
    """moto in process for the whole test, the broker's worker threads included."""
    with mock_aws():
        yield


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
async def broker(aws, prefix):
    b = await open_broker(f"sqs://?region={REGION}&prefix={prefix}&wait=1")
    yield b
    await b.close()


@pytest.fixture
def sqs(aws):
    return boto3.client("sqs", region_name=REGION)


@pytest.fixture
def sns(aws):
    return boto3.client("sns", region_name=REGION)
