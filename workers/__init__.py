"""The consumer runtime: handler registry, payload validation, concurrency and
prefetch, settlement, the middleware chain (tracing, metrics, correlation,
idempotency, retry with backoff, circuit breaker, timeout), idempotency stores,
settings and graceful shutdown, and the AWS Lambda entry point that runs the same
path on SQS event batches (`mailbag.workers.aws_lambda.handler_for`).

It talks to brokers only through the `broker` contract and never imports aio-pika or
boto3 (the DynamoDB store, which needs its own client, is the one exception; the Lambda
entry point also calls the SNS/SQS adapter's `hide`, to time a reported record's
retry). It never decides how a broker stores or routes messages.
"""

from mailbag.broker.breaker import BreakerPolicy
from mailbag.workers.app import App, Handler
from mailbag.workers.context import Context
from mailbag.workers.errors import ConsumerFailed, Postpone, Reject, RetryLater
from mailbag.workers.middleware import Middleware
from mailbag.workers.runtime import Worker
from mailbag.workers.settings import WorkerSettings

__all__ = [
    "App",
    "BreakerPolicy",
    "ConsumerFailed",
    "Context",
    "Handler",
    "Middleware",
    "Postpone",
    "Reject",
    "RetryLater",
    "Worker",
    "WorkerSettings",
]
