"""The pluggable broker layer: the message envelope, the `Broker` contract, topology,
URL handling, and one adapter per backend (`memory`, and the `rabbitmq` and `sqs`
subpackages, each holding its adapter, marshaling and topology modules).

It owns every broker-specific call: aio-pika and boto3 are imported here and nowhere
else, and only once an adapter is opened (`import mailbag` loads neither). It never
holds handler logic, retry decisions or command-line code. As the lowest layer it also
holds what the layers above share: the error tree (`errors`, rooted at `MailbagError`),
the one circuit-breaker state machine (`breaker`) and the one writer of files a user
names (`files`: regular files only, written whole).
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
    ConfigurationError,
    DeliveryReleased,
    MailbagError,
    MessageTooLarge,
    PublishFailed,
    StoreError,
    StoreUnavailable,
    TopologyError,
    UnknownQueue,
    UnknownTopic,
    Unroutable,
)
from mailbag.broker.message import Delivery, Message, new_message_id
from mailbag.broker.topology import Queue, RetryPolicy, Subscription, Topology
from mailbag.broker.url import check_parses, mask_url, scheme_of

#: URL scheme -> "module:factory"; the factory is `async (url, **options) -> Broker`
ADAPTERS = {
    "memory": "mailbag.broker.memory:open_broker",
    "amqp": "mailbag.broker.rabbitmq:open_broker",
    "amqps": "mailbag.broker.rabbitmq:open_broker",
    "sqs": "mailbag.broker.sqs:open_broker",
}


async def connect(url: str, **options: object) -> Broker:
    """Open the broker named by `url`: `memory://`, `amqp://` / `amqps://`, `sqs://`.
    Raises `BrokerUrlError` for an unknown scheme, an unknown option or a URL that does
    not parse as written, `BrokerUnavailable` when the broker cannot be reached."""
    scheme = scheme_of(url)
    target = ADAPTERS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in ADAPTERS)
        raise BrokerUrlError(f"unknown broker URL scheme {scheme!r} in {mask_url(url)!r}; expected one of {known}")
    check_parses(url)
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
    "ConfigurationError",
    "Consumer",
    "Delivery",
    "DeliveryReleased",
    "MailbagError",
    "Message",
    "MessageTooLarge",
    "PublishFailed",
    "Queue",
    "QueueStats",
    "RetryPolicy",
    "StoreError",
    "StoreUnavailable",
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
