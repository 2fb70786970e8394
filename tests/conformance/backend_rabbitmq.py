"""RabbitMQ at 127.0.0.1:5672 in the conformance suite, with classic and quorum queues.

Names are unique per test (`Env.name`); what a test declared is deleted after it.
"""

from contextlib import asynccontextmanager

from mailbag.broker.rabbitmq import open_broker
from tests.conformance.env import Backend, Env, Features
from tests.rabbitmq.service import amqp_url, remove_declared

#: TTL retry queues are real time; a short delay keeps the suite fast
MIN_DELAY = 0.2


def _rabbitmq(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        broker = await open_broker(amqp_url())
        try:
            yield Env(broker, Features(min_delay=MIN_DELAY, queue_defaults=dict(queue_defaults)), _real_time)
        finally:
            await broker.close()
            await remove_declared(broker)

    return Backend(name, open_env)


async def _real_time(seconds: float) -> None:
    """Time passes on its own on a real broker; the suite waits for the outcome instead."""


BACKENDS = [_rabbitmq("rabbitmq-classic"), _rabbitmq("rabbitmq-quorum", kind="quorum")]
