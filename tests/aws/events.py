"""What Lambda does with the function's answer, and plain lookups; the events
themselves come from the public helper (`mailbag.testing.sqs_event`)."""

from __future__ import annotations

from mailbag.testing import LambdaContext
from mailbag.testing.events import sqs_record as record

__all__ = ["LambdaContext", "failed_ids", "queue_arn", "queue_url", "record", "settle_like_lambda", "visible_count"]


def queue_url(sqs, name: str) -> str:
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def queue_arn(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def failed_ids(answer: dict) -> list[str]:
    return [item["itemIdentifier"] for item in answer["batchItemFailures"]]


def settle_like_lambda(sqs, url: str, event: dict, answer: dict | None) -> None:
    """What the event source mapping does with the answer: delete every record not
    reported; the reported ones stay, to come back when their visibility ends. An
    invocation that raised (`answer` None) deletes nothing."""
    if answer is None:
        return
    failed = set(failed_ids(answer))
    for rec in event["Records"]:
        if rec["messageId"] not in failed:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=rec["receiptHandle"])


def visible_count(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])
