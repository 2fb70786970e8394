"""The public face of mailbag: the names applications import, the `mailbag` command
line (`mailbag.cli`) and deploy tooling (`mailbag.deploy`). It holds no business logic
of the layers below, which install as its subpackages: `mailbag.broker`,
`mailbag.workers`, `mailbag.publishers`, `mailbag.dlq`, `mailbag.harness`, and the
order-flow demo `mailbag.examples`.

    from mailbag import App, Context, Publisher, connect

Every error mailbag raises derives from `MailbagError`: catch it, or one family
(`BrokerError`, `PublishError`, `StoreError`, `ConfigurationError`).

The names load on first use (PEP 562), so `import mailbag`, and every `mailbag`
command, pays only for the layers it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: the subpackage that defines each public name not from `mailbag.broker`
_HOMES = {
    **dict.fromkeys(("Publisher", "PublishError"), "mailbag.publishers"),
    **dict.fromkeys(("App", "Context", "Middleware", "Reject", "RetryLater", "Worker"), "mailbag.workers"),
}

#: the subpackages, importable as attributes of `mailbag` too
_SUBPACKAGES = ("broker", "cli", "deploy", "dlq", "examples", "harness", "publishers", "testing", "workers")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mailbag.{name}")
    if name not in __all__:
        raise AttributeError(f"module 'mailbag' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, "mailbag.broker")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
