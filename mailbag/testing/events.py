"""Lambda events built from messages really received from an SQS queue (on moto, or
any SQS), as an event source mapping builds them, for testing `handler_for(app)`:

    app_handler = handler_for(app)
    event = sqs_event("shop.orders")           # the app's queue name, or an SQS queue URL
    answer = app_handler(event, LambdaContext(seconds_left=30))

The received messages stay in the queue, invisible for its visibility timeout, exactly
as with Lambda: the records the function does not report are for the test to delete.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import Any

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
    """The part of Lambda's context object the entry point reads: the time left."""

    def __init__(self, seconds_left: float = 60.0) -> None:
        self._deadline = time.monotonic() + seconds_left

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def sqs_event(
    queue: str,
    count: int = 1,
    *,
    prefix: str = "",
    region: str | None = None,
    client: Any = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Receive `count` messages from `queue` (an SQS queue URL, or the name of one of the
    app's queues, deployed with `prefix`) and return the Lambda event holding them.
    `client` is a boto3 SQS client (default: one for `region` from the standard AWS
    settings). Raises `TimeoutError` if fewer arrive within `timeout` seconds."""
    sqs = client or _client(region)
    url = queue_url(sqs, queue, prefix)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    received: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(received) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(received)} of {count} message(s) arrived on {url} within {timeout:g}s")
        reply = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, count - len(received)),
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=1,
        )
        received += reply.get("Messages", [])
    return {"Records": [sqs_record(m, arn) for m in received]}


def sns_event(
    queue: str,
    count: int = 1,
    *,
    prefix: str = "",
    region: str | None = None,
    client: Any = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """`sqs_event`, as Lambda gets it when the queue's SNS subscription does not use raw
    delivery: each record's body is SNS's JSON notification wrapping the message, and
    the message attributes travel inside it."""
    event = sqs_event(queue, count, prefix=prefix, region=region, client=client, timeout=timeout)
    return {"Records": [_enveloped(r) for r in event["Records"]]}


def queue_url(sqs: Any, queue: str, prefix: str = "") -> str:
    """The URL of `queue`: itself if it is one, else of the app's queue of that name."""
    from mailbag.broker.sqs.mapping import aws_name  # the SNS/SQS adapter loads boto3: only when used

    if queue.startswith(("http://", "https://")):
        return queue
    names = [aws_name(prefix, queue, fifo) for fifo in (False, True)]
    for name in names:
        try:
            return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except sqs.exceptions.QueueDoesNotExist:
            continue
    raise LookupError(f"no SQS queue {' or '.join(names)} (the app's queue {queue!r} with prefix {prefix!r})")


def sqs_record(message: Mapping[str, Any], arn: str) -> dict[str, Any]:
    """One Lambda record from a received message: camelCase keys, attribute values as
    `stringValue` or base64 `binaryValue` text."""
    attributes = {}
    for name, attr in message.get("MessageAttributes", {}).items():
        value = {"stringListValues": [], "binaryListValues": [], "dataType": attr["DataType"]}
        if "BinaryValue" in attr:
            value["binaryValue"] = base64.b64encode(attr["BinaryValue"]).decode()
        else:
            value["stringValue"] = attr["StringValue"]
        attributes[name] = value
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: v for k, v in message["Attributes"].items() if k in RECORD_ATTRIBUTES},
        "messageAttributes": attributes,
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": arn.split(":")[3],
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _enveloped(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record as it is when SNS wraps the message in its notification."""
    from mailbag.broker.sqs.marshal import TOPIC

    region, account = record["eventSourceARN"].split(":")[3:5]
    attributes = {}
    for name, attr in record["messageAttributes"].items():
        kind = attr["dataType"]
        attributes[name] = {"Type": kind, "Value": attr.get("binaryValue") or attr.get("stringValue")}
    topic = attributes.get(TOPIC, {}).get("Value") or "topic"
    sent = int(record["attributes"].get("SentTimestamp", time.time() * 1000)) / 1000
    notification = {
        "Type": "Notification",
        "MessageId": record["messageId"],
        "TopicArn": f"arn:aws:sns:{region}:{account}:{str(topic).replace('.', '_')}",
        "Message": record["body"],
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(sent)),
        "SignatureVersion": "1",
        "MessageAttributes": attributes,
    }
    enveloped = {**record, "body": json.dumps(notification), "messageAttributes": {}}
    enveloped.pop("md5OfMessageAttributes", None)
    return enveloped


def _client(region: str | None) -> Any:
    import boto3

    return boto3.client("sqs", region_name=region)
