"""SNS/SQS on moto (in process) where the topology is never declared through the
adapter: `declare` exports it as a CloudFormation template and deploys the stack, and
the adapter finds by name (under its prefix) what the stack made. Standard queues
only: FIFO ones on a stack pass too but double the time (`_stack(..., ordered=True)`);
tests/cloudformation covers a worker on FIFO queues a stack made."""

import asyncio
import uuid
from collections.abc import Sequence
from contextlib import asynccontextmanager

import boto3
from moto import mock_aws

from mailbag.broker import Broker, Message, Topology
from mailbag.broker.base import Consumer, QueueStats
from mailbag.broker.sqs import open_broker
from mailbag.broker.unroutable import Unrouted
from mailbag.deploy.cloudformation import template
from tests.cloudformation.stack import deploy
from tests.conformance.backend_sqs import delete_queue, plain_publish, sqs_features
from tests.conformance.env import Backend, Env
from tests.moto_server import REGION


class StackBroker(Broker):
    """The SQS adapter, with `declare` deploying one CloudFormation stack: each
    declaration adds to the stack's topology, and one that adds nothing changes
    nothing (as `aws cloudformation deploy` does with an empty change set)."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        self.broker = broker
        self.url = broker.url
        self.prefix = prefix
        self.stack = f"{prefix}topology"
        self.topology: Topology | None = None
        self.cfn = boto3.client("cloudformation", region_name=REGION)

    async def declare(self, topology: Topology) -> None:
        merged = topology if self.topology is None else self.topology.merge(topology)
        if merged == self.topology:
            return
        await asyncio.to_thread(deploy, self.cfn, self.stack, template(merged, prefix=self.prefix))
        self.topology = merged

    async def remove(self, topology: Topology) -> None:
        """What a stack's deletion does, without waiting for one: the resources go."""
        await self.broker.remove(topology)

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await self.broker.publish(topic, messages, mandatory=mandatory)

    @property
    def unrouted(self) -> Unrouted:  # type: ignore[override]
        return self.broker.unrouted

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        await self.broker.send(queue, messages, delay=delay)

    def consume(self, queue: str, prefetch: int = 10) -> Consumer:
        return self.broker.consume(queue, prefetch)

    async def stats(self, queue: str) -> QueueStats:
        return await self.broker.stats(queue)

    async def browse(self, queue: str, limit: int = 100) -> list[Message]:
        return await self.broker.browse(queue, limit)

    async def purge(self, queue: str) -> int:
        return await self.broker.purge(queue)

    async def queue_names(self) -> list[str] | None:
        return await self.broker.queue_names()

    async def close(self) -> None:
        await self.broker.close()


async def _real_time(seconds: float) -> None:
    """Time is real here: the suite's `advance` has nothing to do."""


def _stack(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        prefix = f"c{uuid.uuid4().hex[:8]}-"
        # mock_aws wraps the whole test, the broker's worker threads included
        with mock_aws():
            broker = StackBroker(await open_broker(f"sqs://?region={REGION}&prefix={prefix}&wait=1"), prefix)
            try:
                features = sqs_features(dict(queue_defaults))
                yield Env(broker, features, _real_time, delete_queue(broker.broker), plain_publish(broker.broker))
            finally:
                await broker.close()

    return Backend(name, open_env)


BACKENDS = [_stack("sqs-cloudformation")]
