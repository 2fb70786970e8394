"""Lambda SQS events as AWS builds them, from messages really received from a queue,
and what Lambda does with the function's answer."""

from __future__ import annotations

import base64
import time
from typing import Any

from tests.moto_server import REGION

#: the record attributes Lambda passes on (FIFO ones only for FIFO queues)
RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
)


class LambdaContext:
    """The part of Lambda's context object the entry point reads."""

    def __init__(self, seconds_left: float) -> None:
        self._deadline = time.monotonic() + seconds_left

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def queue_url(sqs, name: str) -> str:
    return sqs.get_queue_url(QueueName=name)["QueueUrl"]


def queue_arn(sqs, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def receive_event(sqs, url: str, count: int, timeout: float = 10.0) -> dict[str, Any]:
    """Receive `count` messages (as an event source mapping polls) and build the event."""
    arn = queue_arn(sqs, url)
    received: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        assert time.monotonic() < deadline, f"only {len(received)} of {count} message(s) arrived on {url}"
        reply = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, count - len(received)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=1,
        )
        received += reply.get("Messages", [])
    return {"Records": [record(m, arn) for m in received]}


def record(message: dict, arn: str) -> dict[str, Any]:
    """One Lambda record: camelCase keys, attribute values as `stringValue` or base64
    `binaryValue` text."""
    attributes = {}
    for name, attr in message.get("MessageAttributes", {}).items():
        value = {"stringListValues": [], "binaryListValues": [], "dataType": attr["DataType"]}
        if "BinaryValue" in attr:
            value["binaryValue"] = base64.b64encode(attr["BinaryValue"]).decode()
        else:
            value["stringValue"] = attr["StringValue"]
        attributes[name] = value
    rec = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: v for k, v in message["Attributes"].items() if k in RECORD_ATTRIBUTES},
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": REGION,
    }
    if "MD5OfMessageAttributes" in message:
        rec["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return rec


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
