"""SNS/SQS on moto (in process) where the topology is never declared through the
adapter: `declare` exports it as a CloudFormation template and deploys the stack, and
the adapter finds by name (under its prefix) what the stack made. Standard queues
only: FIFO ones on a stack pass too but double the time (`_stack(..., ordered=True)`);
tests/cloudformation covers a worker on FIFO queues a stack made."""

import asyncio
import uuid
from contextlib import asynccontextmanager

import boto3
from moto import mock_aws

from mailbag.broker import Broker, Topology
from mailbag.broker.delegating import Delegating
from mailbag.broker.sqs import open_broker
from mailbag.deploy.cloudformation import template
from tests.cloudformation.stack import deploy
from tests.conformance.backend_sqs import delete_queue, plain_publish, sqs_features
from tests.conformance.env import Backend, Env
from tests.moto_server import REGION


class StackBroker(Delegating):
    """The SQS adapter, with `declare` deploying one CloudFormation stack: each
    declaration adds to the stack's topology, and one that adds nothing changes
    nothing (as `aws cloudformation deploy` does with an empty change set)."""

    def __init__(self, broker: Broker, prefix: str) -> None:
        super().__init__(broker)
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
                yield Env(broker, features, _real_time, delete_queue(broker.inner), plain_publish(broker.inner))
            finally:
                await broker.close()

    return Backend(name, open_env)


BACKENDS = [_stack("sqs-cloudformation")]
