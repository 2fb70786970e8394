"""SNS/SQS on moto, in process (`mock_aws`) and over HTTP (`moto_server`), each with
standard and FIFO queues. SQS visibility is whole seconds, hence `min_delay=1.0`; long
polls last one second so closing a broker never waits long."""

import asyncio
import uuid
from contextlib import asynccontextmanager

from moto import mock_aws

from mailbag.broker.sqs import open_broker
from tests.conformance.env import Backend, Env, Features
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server


async def _real_time(seconds: float) -> None:
    """Time is real here: the suite's `advance` has nothing to do."""


def _features(queue_defaults: dict) -> Features:
    return Features(min_delay=1.0, queue_defaults=queue_defaults)


def _in_process(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        # mock_aws wraps the whole test, the broker's worker threads included
        with mock_aws():
            broker = await open_broker(f"sqs://?region={REGION}&wait=1")
            try:
                yield Env(broker, _features(dict(queue_defaults)), _real_time)
            finally:
                await broker.close()

    return Backend(name, open_env)


def _over_http(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        endpoint = shared_moto_server()
        prefix = f"c{uuid.uuid4().hex[:8]}-"
        with dummy_aws_credentials():
            broker = await open_broker(f"sqs://?region={REGION}&endpoint={endpoint}&prefix={prefix}&wait=1")
            try:
                yield Env(broker, _features(dict(queue_defaults)), _real_time)
            finally:
                await broker.close()
                await asyncio.to_thread(delete_prefixed, endpoint, prefix)

    return Backend(name, open_env)


BACKENDS = [
    _in_process("sqs-moto"),
    _in_process("sqs-moto-fifo", ordered=True),
    _over_http("sqs-moto-server"),
    _over_http("sqs-moto-server-fifo", ordered=True),
]
