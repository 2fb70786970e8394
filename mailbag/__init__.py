"""The public face of mailbag: the names applications import, the `mailbag` command
line (`mailbag.cli`) and deploy tooling (`mailbag.deploy`). It holds no business logic
of the layers below, which install as its subpackages: `mailbag.broker`,
`mailbag.workers`, `mailbag.publishers`, `mailbag.dlq`, `mailbag.harness`, and the
order-flow demo `mailbag.examples`.

    from mailbag import App, Context, Publisher, connect

Every error mailbag raises derives from `MailbagError`: catch it, or one family
(`BrokerError`, `PublishError`, `StoreError`, `ConfigurationError`).
"""

from mailbag.broker import (
    Broker,
    BrokerError,
    ConfigurationError,
    Delivery,
    MailbagError,
    Message,
    Queue,
    RetryPolicy,
    StoreError,
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
    "ConfigurationError",
    "Context",
    "Delivery",
    "MailbagError",
    "Message",
    "Middleware",
    "PublishError",
    "Publisher",
    "Queue",
    "Reject",
    "RetryLater",
    "RetryPolicy",
    "StoreError",
    "Subscription",
    "Topology",
    "Unroutable",
    "Worker",
    "connect",
    "mask_url",
]
