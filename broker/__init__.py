"""The pluggable broker layer: the message envelope, the `Broker` contract, topology,
URL handling, and one adapter module per backend (`memory`, `rabbitmq`, `sqs`).

It owns every broker-specific call: aio-pika and boto3 are imported here and nowhere
else. It never holds handler logic, retry decisions or command-line code.
"""

from __future__ import annotations

import importlib

from mailbag.broker.base import Broker, Consumer, QueueStats
from mailbag.broker.errors import (
    AlreadySettled,
    BrokerClosed,
    BrokerError,
    BrokerUnavailable,
    BrokerUrlError,
    DeliveryReleased,
    MessageTooLarge,
    PublishFailed,
    TopologyError,
    UnknownQueue,
    UnknownTopic,
    Unroutable,
)
from mailbag.broker.message import Delivery, Message, new_message_id
from mailbag.broker.topology import Queue, RetryPolicy, Subscription, Topology
from mailbag.broker.url import mask_url, scheme_of

#: URL scheme -> "module:factory"; the factory is `async (url, **options) -> Broker`
ADAPTERS = {
    "memory": "mailbag.broker.memory:open_broker",
    "amqp": "mailbag.broker.rabbitmq:open_broker",
    "amqps": "mailbag.broker.rabbitmq:open_broker",
    "sqs": "mailbag.broker.sqs:open_broker",
}


async def connect(url: str, **options: object) -> Broker:
    """Open the broker named by `url`: `memory://`, `amqp://` / `amqps://`, `sqs://`.
    Raises `BrokerUrlError` for an unknown scheme, `BrokerUnavailable` when the broker
    cannot be reached."""
    scheme = scheme_of(url)
    target = ADAPTERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in ADAPTERS)
        raise BrokerUrlError(f"unknown broker URL scheme {scheme!r} in {mask_url(url)!r}; expected one of {known}")
    module_name, factory = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise BrokerUrlError(f"the {scheme}:// adapter is not available in this version of mailbag") from None
    return await getattr(module, factory)(url, **options)


__all__ = [
    "ADAPTERS",
    "AlreadySettled",
    "Broker",
    "BrokerClosed",
    "BrokerError",
    "BrokerUnavailable",
    "BrokerUrlError",
    "Consumer",
    "Delivery",
    "DeliveryReleased",
    "Message",
    "MessageTooLarge",
    "PublishFailed",
    "Queue",
    "QueueStats",
    "RetryPolicy",
    "Subscription",
    "Topology",
    "TopologyError",
    "UnknownQueue",
    "UnknownTopic",
    "Unroutable",
    "connect",
    "mask_url",
    "new_message_id",
]
