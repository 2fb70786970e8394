"""The SNS/SQS adapter on boto3: `adapter` (the `Broker`), `client` (the boto3 clients
and their threads), `marshal` (a `Message` as message attributes and back), `mapping`
(a `Topology` as SNS/SQS resources, as plain data, shared with the CloudFormation
export) and `topology` (applying that mapping through the AWS APIs).

The adapter (and boto3) loads on first use of its names, so the CloudFormation export
reads `mapping` without loading boto3."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailbag.broker.sqs.adapter import SqsBroker, open_broker

__all__ = ["SqsBroker", "open_broker"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("mailbag.broker.sqs.adapter"), name)
