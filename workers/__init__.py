"""The consumer runtime: handler registry, payload validation, settlement, middleware
and the worker loop.

It talks to brokers only through the `broker` contract and never imports aio-pika or
boto3 (store modules that need their own client are the one exception).
"""

from workers.app import App, Handler
from workers.context import Context
from workers.errors import Reject, RetryLater
from workers.middleware import Middleware
from workers.runtime import Worker

__all__ = ["App", "Context", "Handler", "Middleware", "Reject", "RetryLater", "Worker"]
