"""Plain boto3 reads what we publish and publishes what we consume: no private
wrapper around the body, every field a message attribute of its own."""

import json

from mailbag.broker import Queue, Topology
from mailbag.broker.sqs import marshal as wire
from mailbag.dlq import DeadLetters
from tests.conformance.env import eventually, next_delivery
from tests.sqs.helpers import message


async def test_plain_boto3_reads_what_we_publish(broker, prefix, sqs):
    # Given a queue on a topic
    await broker.declare(Topology(queues=(Queue("billing", ("orders",)),)))
    sent = message(
        "orders",
        b'{"order": 7}',
        type="OrderPlaced",
        headers={"tenant": "acme", "priority": 5},
        correlation_id="corr-7",
        ordering_key="order-7",
    )
    # When we publish through SNS
    await broker.publish("orders", [sent])
    # Then a plain SQS receive sees the body untouched and each field as an attribute
    url = sqs.get_queue_url(QueueName=f"{prefix}billing")["QueueUrl"]
    [raw] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    attrs = raw["MessageAttributes"]
    assert raw["Body"] == '{"order": 7}'
    assert attrs[wire.ID]["StringValue"] == sent.id
    assert attrs[wire.TOPIC]["StringValue"] == "orders"
    assert attrs[wire.TYPE]["StringValue"] == "OrderPlaced"
    assert attrs[wire.CORRELATION_ID]["StringValue"] == "corr-7"
    assert attrs[wire.ORDERING_KEY]["StringValue"] == "order-7"
    assert attrs["tenant"] == {"DataType": "String", "StringValue": "acme"}
    assert attrs["priority"] == {"DataType": "Number", "StringValue": "5"}


async def test_we_consume_what_plain_boto3_publishes_to_our_topic(broker, sns):
    # Given our queue subscribed to our topic
    await broker.declare(Topology(queues=(Queue("billing", ("orders",)),)))
    [topic_arn] = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith("orders")]
    # When another service publishes with plain boto3 and one attribute of its own
    sns.publish(
        TopicArn=topic_arn,
        Message='{"order": 8}',
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    # Then we receive it: topic from the queue's subscription, id from SQS, header intact
    async with broker.consume("billing") as consumer:
        d = await next_delivery(consumer)
        assert d.message.body == b'{"order": 8}'
        assert d.message.topic == "orders"
        assert d.message.headers == {"tenant": "acme"}
        assert d.message.id and d.attempt == 1
        await d.ack()


async def test_we_consume_what_plain_boto3_sends_to_our_queue_with_our_fields(broker, prefix, sqs):
    await broker.declare(Topology(queues=(Queue("billing", ("orders", "refunds")),)))
    url = sqs.get_queue_url(QueueName=f"{prefix}billing")["QueueUrl"]
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"refund": 1}),
        MessageAttributes={
            wire.TOPIC: {"DataType": "String", "StringValue": "refunds"},
            wire.ID: {"DataType": "String", "StringValue": "ext-1"},
            "amount": {"DataType": "Number", "StringValue": "12.5"},
        },
    )
    async with broker.consume("billing") as consumer:
        d = await next_delivery(consumer)
        assert (d.message.topic, d.message.id) == ("refunds", "ext-1")
        assert d.message.headers == {"amount": 12.5}
        await d.ack()


async def test_a_body_that_does_not_decode_is_dead_lettered_with_its_reason(broker, prefix, sqs):
    # Given messages a plain client sent saying base64 whose bodies are not, or empty once decoded,
    # and one whose reserved attempts header is no number
    await broker.declare(Topology(queues=(Queue("billing", ("orders",)),)))
    url = sqs.get_queue_url(QueueName=f"{prefix}billing")["QueueUrl"]
    base64 = {wire.BODY_ENCODING: {"DataType": "String", "StringValue": "base64"}}
    for body in ("not base64 at all!", "===="):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=base64)
    sqs.send_message(
        QueueUrl=url,
        MessageBody="{}",
        MessageAttributes={"x-mailbag-attempts-used": {"DataType": "String", "StringValue": "many"}},
    )
    sqs.send_message(QueueUrl=url, MessageBody='{"good": 1}')
    # When the queue is consumed, Then the good one arrives and the others are dead-lettered with their reason
    async with broker.consume("billing") as consumer:
        d = await next_delivery(consumer)
        assert d.message.body == b'{"good": 1}'
        await d.ack()
    letters = DeadLetters(broker, "billing")

    async def three_dead() -> bool:
        return len(await letters.ls()) == 3

    await eventually(three_dead, what="three dead letters")
    reasons = sorted(r.reason for r in await letters.ls())
    assert all(r.startswith("undecodable SQS message") for r in reasons), reasons
    assert any("x-mailbag-attempts-used" in r for r in reasons)
