"""Fixtures for the AWS deployment tests: moto in process, a mailbag SNS/SQS broker
with a unique prefix that declares and publishes, plain boto3 clients that receive
what a Lambda event source mapping would, and Lambda handlers closed after the test."""

import asyncio
import uuid

import pytest

from mailbag.broker.sqs import open_broker
from mailbag.workers import App, WorkerSettings
from mailbag.workers.aws_lambda import LambdaHandler, handler_for
from tests.moto_server import REGION


@pytest.fixture
def prefix() -> str:
    return f"l{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def broker_url(prefix) -> str:
    return f"sqs://?region={REGION}&prefix={prefix}&wait=1"


@pytest.fixture
async def broker(aws, broker_url):
    b = await open_broker(broker_url)
    yield b
    await b.close()


@pytest.fixture
async def lambda_for(broker_url):
    """`lambda_for(app, margin=, raise_on_entire_batch_failure=, fifo=, **settings)`: the
    app's Lambda handler on the test's queues (memory idempotency store and no retry
    jitter unless the test says otherwise)."""
    made: list[LambdaHandler] = []

    def make(
        app: App, margin: float = 1.0, raise_on_entire_batch_failure: bool = True, fifo: str = "group", **settings
    ) -> LambdaHandler:
        defaults = {"broker_url": broker_url, "idempotency_url": "memory://", "retry_jitter": False}
        handler = handler_for(
            app,
            settings=WorkerSettings(**{**defaults, **settings}),
            margin=margin,
            raise_on_entire_batch_failure=raise_on_entire_batch_failure,
            fifo=fifo,
        )
        made.append(handler)
        return handler

    yield make
    for handler in made:
        await asyncio.to_thread(handler.close)
