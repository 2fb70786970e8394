"""A Lambda SQS record decodes to the same `Message` as the `ReceiveMessage` result it
was made from, whether SNS delivered it raw or wrapped in its JSON envelope."""

import json

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.sqs.marshal import from_lambda_record, from_wire
from tests.aws.events import queue_arn, queue_url, record

HEADERS = {"tenant": "acme", "count": 5, "ratio": 0.25, "urgent": True, "empty": "", "big": 10**40}


def receive(sqs, url: str) -> dict:
    [raw] = sqs.receive_message(QueueUrl=url, AttributeNames=["All"], MessageAttributeNames=["All"], WaitTimeSeconds=1)[
        "Messages"
    ]
    return raw


async def test_a_raw_record_decodes_like_the_received_message(broker, sqs, prefix):
    # Given a message with every envelope field, typed headers and a binary body
    await broker.declare(Topology(queues=(Queue("audit", ("files",)),)))
    sent = Message(
        "files",
        bytes(range(256)),
        content_type="application/octet-stream",
        type="Blob",
        headers=HEADERS,
        correlation_id="c",
        causation_id="k",
        ordering_key="o",
    )
    await broker.publish("files", [sent])
    url = queue_url(sqs, f"{prefix}audit")
    # When it is received and turned into a Lambda record
    raw = receive(sqs, url)
    rec = record(raw, queue_arn(sqs, url))
    # Then the record decodes to the message the worker would have seen
    assert from_lambda_record(rec, "files") == from_wire(raw, "files") == sent


async def test_a_binary_attribute_of_a_plain_client_arrives_as_base64_text(sqs, broker, prefix):
    await broker.declare(Topology(queues=(Queue("audit", ("files",)),)))
    url = queue_url(sqs, f"{prefix}audit")
    sqs.send_message(
        QueueUrl=url, MessageBody="hi", MessageAttributes={"sig": {"DataType": "Binary", "BinaryValue": b"\x01\x02"}}
    )
    raw = receive(sqs, url)
    rec = record(raw, queue_arn(sqs, url))
    assert rec["messageAttributes"]["sig"]["binaryValue"] == "AQI="
    decoded = from_lambda_record(rec, "files")
    assert decoded == from_wire(raw, "files")
    assert decoded.headers == {"sig": "AQI="} and decoded.id == raw["MessageId"] and decoded.topic == "files"


async def test_an_sns_envelope_record_decodes_to_the_published_message(broker, sqs, sns, prefix):
    # Given a queue subscribed without raw delivery
    await broker.declare(Topology(queues=(Queue("audit", ("files",)),)))
    url = queue_url(sqs, f"{prefix}audit")
    topic_arn = next(t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f"{prefix}files"))
    [sub] = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    sent = Message("files", b'{"name": "a.txt"}', headers={"tenant": "acme", "count": 5}, correlation_id="c")
    # When it is published and received
    await broker.publish("files", [sent])
    rec = record(receive(sqs, url), queue_arn(sqs, url))
    # Then the body is SNS's envelope, and the message inside it is the one published
    envelope = json.loads(rec["body"])
    assert envelope["Type"] == "Notification" and rec["messageAttributes"] == {}
    assert from_lambda_record(rec, "other") == sent


def test_a_body_that_only_looks_like_an_envelope_but_has_attributes_is_the_message():
    body = json.dumps({"Type": "Notification", "TopicArn": "arn", "Message": "inner", "MessageId": "x"})
    rec = {
        "messageId": "m1",
        "body": body,
        "attributes": {"SentTimestamp": "1700000000000"},
        "messageAttributes": {"mailbag.id": {"stringValue": "id-1", "dataType": "String"}},
    }
    message = from_lambda_record(rec, "t")
    assert message.body == body.encode() and message.id == "id-1"
