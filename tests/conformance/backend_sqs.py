"""SNS/SQS on moto, in process (`mock_aws`) and over HTTP (`moto_server`), each with
standard and FIFO queues. SQS visibility is whole seconds, hence `min_delay=1.0`; long
polls last one second so closing a broker never waits long."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from moto import mock_aws

from mailbag.broker import Broker
from mailbag.broker.sqs import open_broker
from tests.conformance.env import Backend, Env, Features
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server


async def _real_time(seconds: float) -> None:
    """Time is real here: the suite's `advance` has nothing to do."""


#: SQS moves a message received maxReceiveCount times to the dead-letter queue itself
REDRIVE = (
    "SQS redrives a message received maxReceiveCount times to its dead-letter queue by itself; "
    "with that queue deleted, moto drops the message"
)


#: visibility is whole seconds (a delay is rounded up), and a long poll answers within moto's poll step
DELAY_BOUND = 1.5


#: the message group of what the suite's plain client sends to a FIFO queue
PLAIN_GROUP = "plain"


def sqs_features(queue_defaults: dict) -> Features:
    return Features(
        min_delay=1.0,
        delay_bound=DELAY_BOUND,
        queue_defaults=queue_defaults,
        redrive_without_dead_letter_queue=REDRIVE,
        plain_ordering_key=PLAIN_GROUP if queue_defaults.get("ordered") else None,
    )


def delete_queue(broker: Broker) -> Callable[[str], Awaitable[None]]:
    """Delete one of the broker's SQS queues behind its back (it keeps the queue's URL)."""

    async def delete(name: str) -> None:
        ref = await broker._resources.queue(name)  # type: ignore[attr-defined]
        await broker.aws.call(broker.aws.sqs.delete_queue, QueueUrl=ref.url)  # type: ignore[attr-defined]

    return delete


def plain_publish(broker: Broker) -> Callable[[str, str, bytes, dict], Awaitable[None]]:
    """What the AWS CLI or a service in another language sends: a bare SQS message."""

    async def send(topic: str, queue: str, body: bytes, headers: dict) -> None:
        ref = await broker._resources.queue(queue)  # type: ignore[attr-defined]
        extra: dict = {"MessageGroupId": PLAIN_GROUP, "MessageDeduplicationId": uuid.uuid4().hex} if ref.fifo else {}
        if headers:
            extra["MessageAttributes"] = {k: {"DataType": "String", "StringValue": str(v)} for k, v in headers.items()}
        await broker.aws.call(  # type: ignore[attr-defined]
            broker.aws.sqs.send_message,  # type: ignore[attr-defined]
            QueueUrl=ref.url,
            MessageBody=body.decode(),
            **extra,
        )

    return send


def _in_process(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        # mock_aws wraps the whole test, the broker's worker threads included
        with mock_aws():
            broker = await open_broker(f"sqs://?region={REGION}&wait=1")
            try:
                yield Env(
                    broker, sqs_features(dict(queue_defaults)), _real_time, delete_queue(broker), plain_publish(broker)
                )
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
                yield Env(
                    broker, sqs_features(dict(queue_defaults)), _real_time, delete_queue(broker), plain_publish(broker)
                )
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
