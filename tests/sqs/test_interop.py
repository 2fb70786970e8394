"""Plain boto3 reads what we publish and publishes what we consume: no private
wrapper around the body, every field a message attribute of its own."""

import json

from mailbag.broker import Queue, Topology
from mailbag.broker.sqs import marshal as wire
from mailbag.dlq import DeadLetters
from mailbag.testing import sqs_event
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


async def test_a_plain_fifo_message_reads_its_message_group_as_its_ordering_key(broker, prefix, sqs):
    # Given our ordered (FIFO) queue
    await broker.declare(Topology(queues=(Queue("carts", ("carts",), ordered=True),)))
    url = sqs.get_queue_url(QueueName=f"{prefix}carts.fifo")["QueueUrl"]
    # When plain boto3 sends to it as the AWS CLI does: a group id, no mailbag attribute
    for n, group in enumerate(["cart-7", "cart-7", "cart-8"]):
        sqs.send_message(
            QueueUrl=url, MessageBody=json.dumps({"n": n}), MessageGroupId=group, MessageDeduplicationId=f"d-{n}"
        )
    # Then each message's ordering key is its group, in the group's order
    async with broker.consume("carts") as consumer:
        seen = []
        for _ in range(3):
            d = await next_delivery(consumer)
            seen.append((d.message.ordering_key, json.loads(d.message.body)["n"]))
            await d.ack()
    assert sorted(seen) == [("cart-7", 0), ("cart-7", 1), ("cart-8", 2)]
    assert [n for key, n in seen if key == "cart-7"] == [0, 1]


async def test_our_own_fifo_message_keeps_its_ordering_key_or_its_lack_of_one(broker):
    # Given our ordered (FIFO) queue, and two messages of ours: one keyed, one not
    await broker.declare(Topology(queues=(Queue("carts", ("carts",), ordered=True),)))
    keyed, keyless = message("carts", b"{}", ordering_key="cart-9"), message("carts", b"[]")
    # When they go through SNS FIFO (the keyless one in a group named after its id)
    await broker.publish("carts", [keyed, keyless])
    # Then they read back with the key they were published with, and none for the keyless one
    async with broker.consume("carts") as consumer:
        keys = {}
        for _ in range(2):
            d = await next_delivery(consumer)
            keys[d.message.id] = d.message.ordering_key
            await d.ack()
    assert keys == {keyed.id: "cart-9", keyless.id: None}


async def test_a_plain_fifo_record_of_a_lambda_event_reads_its_message_group_as_its_ordering_key(broker, prefix, sqs):
    # Given a Lambda event holding a message plain boto3 sent to a FIFO queue
    await broker.declare(Topology(queues=(Queue("carts", ("carts",), ordered=True),)))
    url = sqs.get_queue_url(QueueName=f"{prefix}carts.fifo")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="{}", MessageGroupId="cart-7", MessageDeduplicationId="d-1")
    [record] = sqs_event(url, client=sqs)["Records"]
    # When the record is decoded as the Lambda entry point decodes it
    decoded = wire.from_lambda_record(record, "carts")
    # Then its ordering key is its group
    assert decoded.ordering_key == "cart-7"
