"""The public face of mailbag: the names applications import, and the `mailbag`
command line (`mailbag.cli`). It holds no business logic of the layers below.

    from mailbag import App, Context, Publisher, connect
"""

from mailbag.broker import (
    Broker,
    BrokerError,
    Delivery,
    Message,
    Queue,
    RetryPolicy,
    Subscription,
    Topology,
    Unroutable,
    connect,
    mask_url,
)
from mailbag.publishers import Publisher, PublishError
from mailbag.workers import App, Context, Middleware, Reject, RetryLater, Worker

__all__ = [
    "App",
    "Broker",
    "BrokerError",
    "Context",
    "Delivery",
    "Message",
    "Middleware",
    "PublishError",
    "Publisher",
    "Queue",
    "Reject",
    "RetryLater",
    "RetryPolicy",
    "Subscription",
    "Topology",
    "Unroutable",
    "Worker",
    "connect",
    "mask_url",
]
