"""The AWS Lambda entry point: an SQS-triggered function that runs an app's handlers on
the worker's own path and answers with `batchItemFailures` (`handler`)."""

from mailbag.workers.aws_lambda.handler import LambdaHandler, handler_for

__all__ = ["LambdaHandler", "handler_for"]
