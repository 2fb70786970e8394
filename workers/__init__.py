"""The consumer runtime: handler registry, payload validation, concurrency and
prefetch, settlement, the middleware chain (correlation, idempotency, retry with
backoff, circuit breaker, timeout), idempotency stores, settings and graceful shutdown.

It talks to brokers only through the `broker` contract and never imports aio-pika or
boto3 (the DynamoDB store, which needs its own client, is the one exception). It never
decides how a broker stores or routes messages.
"""

from workers.app import App, Handler
from workers.context import Context
from workers.errors import Postpone, Reject, RetryLater
from workers.middleware import Middleware
from workers.middleware.breaker import BreakerPolicy
from workers.runtime import Worker
from workers.settings import WorkerSettings

__all__ = [
    "App",
    "BreakerPolicy",
    "Context",
    "Handler",
    "Middleware",
    "Postpone",
    "Reject",
    "RetryLater",
    "Worker",
    "WorkerSettings",
]
