"""RabbitMQ at 127.0.0.1:5672 in the conformance suite, with classic and quorum queues.

Names are unique per test (`Env.name`); what a test declared is deleted after it.
"""

from contextlib import asynccontextmanager

import aio_pika

from mailbag.broker.rabbitmq import open_broker
from tests.conformance.env import Backend, Env, Features
from tests.rabbitmq.service import amqp_url, delete_queues, remove_declared

#: TTL retry queues are real time; a short delay keeps the suite fast
MIN_DELAY = 0.2
#: the delay levels' documented bound (10 ms rounding, a hop per level) with room for a busy shared machine
DELAY_BOUND = 0.5


def _rabbitmq(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        broker = await open_broker(amqp_url())
        try:
            features = Features(
                min_delay=MIN_DELAY,
                delay_bound=DELAY_BOUND,
                queue_defaults=dict(queue_defaults),
                redrive_without_dead_letter_queue=QUORUM_LIMIT if queue_defaults.get("kind") == "quorum" else None,
            )
            yield Env(broker, features, _real_time, _delete_queue, _plain_publish, lambda: broker._connection.transport)
        finally:
            await broker.close()
            await remove_declared(broker)

    return Backend(name, open_env)


#: a quorum queue enforces its delivery limit itself
QUORUM_LIMIT = (
    "a quorum queue dead-letters a message past its x-delivery-limit by itself; with the dead-letter "
    "queue deleted the message waits in the queue's at-least-once dead-letter buffer, out of consumers' sight"
)


async def _delete_queue(name: str) -> None:
    await delete_queues([name])


async def _plain_publish(topic: str, queue: str, body: bytes, headers: dict) -> None:
    """What pika or a service in another language sends: a bare AMQP message."""
    async with await aio_pika.connect(amqp_url()) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topic)
        await exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")


async def _real_time(seconds: float) -> None:
    """Time passes on its own on a real broker; the suite waits for the outcome instead."""


BACKENDS = [_rabbitmq("rabbitmq-classic"), _rabbitmq("rabbitmq-quorum", kind="quorum")]
