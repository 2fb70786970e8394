"""Fixtures for the SNS/SQS adapter's own tests: moto in process, a broker with a
unique prefix (moto and the boto3 clients come from `tests/conftest.py`)."""

import uuid

import pytest

from mailbag.broker.sqs import open_broker
from tests.moto_server import REGION, moto_server  # noqa: F401  (re-exported fixture)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
async def broker(aws, prefix):
    b = await open_broker(f"sqs://?region={REGION}&prefix={prefix}&wait=1")
    yield b
    await b.close()
