"""The AWS Lambda entry point: an SQS-triggered function that runs an app's handlers on
the worker's own path and answers with `batchItemFailures` (`handler`)."""

from mailbag.workers.aws_lambda.handler import BatchFailed, LambdaHandler, handler_for

__all__ = ["BatchFailed", "LambdaHandler", "handler_for"]
