"""Message <-> SNS/SQS attributes: the ten-attribute limit of raw delivery, bodies SNS
cannot carry as text, and size limits checked before any call."""

import pytest

from mailbag.broker import MessageTooLarge, Queue, Topology
from mailbag.broker.sqs import marshal as wire
from tests.conformance.env import next_delivery
from tests.sqs.helpers import CallCounter, message

MANY_HEADERS = {
    **{f"h{i}": f"v{i}" for i in range(12)},
    "flag": True,
    "ratio": 0.25,
    "big": 10**40,
    "has space": "x",
    "empty": "",
    "mailbag.id": "not the id",
}


def test_every_field_and_many_headers_fit_in_ten_attributes():
    m = message("orders", type="T", correlation_id="c", causation_id="k", ordering_key="o", headers=MANY_HEADERS)
    w = wire.to_wire(m)
    assert len(w.attributes) == wire.MAX_ATTRIBUTES
    assert wire.HEADERS in w.attributes
    back = wire.from_wire({"Body": w.body, "MessageId": "x", "MessageAttributes": w.attributes}, "orders")
    assert back == m


def test_a_body_that_is_not_sqs_text_travels_base64_and_comes_back_as_bytes():
    m = message("orders", b"\x00\xff\x01binary", content_type="application/octet-stream")
    w = wire.to_wire(m)
    assert w.attributes[wire.BODY_ENCODING]["StringValue"] == "base64"
    assert wire.from_wire({"Body": w.body, "MessageId": "x", "MessageAttributes": w.attributes}, "t").body == m.body


async def test_a_message_with_many_headers_arrives_through_raw_delivery(broker, prefix, sqs):
    # Given a queue on a topic (real SNS drops a raw delivery carrying more than 10
    # attributes; moto does not, so the test also counts what went on the wire)
    await broker.declare(Topology(queues=(Queue("audit", ("orders",)),)))
    sent = message("orders", type="T", correlation_id="c", causation_id="k", ordering_key="o", headers=MANY_HEADERS)
    # When it is published
    await broker.publish("orders", [sent])
    # Then it arrives with every header, types intact, on at most ten attributes
    async with broker.consume("audit") as consumer:
        d = await next_delivery(consumer)
        assert d.message == sent
        await d.retry(0)
    url = sqs.get_queue_url(QueueName=f"{prefix}audit")["QueueUrl"]
    [raw] = sqs.receive_message(QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1)["Messages"]
    assert len(raw["MessageAttributes"]) <= wire.MAX_ATTRIBUTES


async def test_binary_body_survives_sns(broker):
    await broker.declare(Topology(queues=(Queue("blobs", ("files",)),)))
    sent = message("files", bytes(range(256)), content_type="application/octet-stream")
    await broker.publish("files", [sent])
    async with broker.consume("blobs") as consumer:
        d = await next_delivery(consumer)
        assert d.message.body == sent.body
        await d.ack()


async def test_too_large_for_sns_fails_before_any_call(broker):
    await broker.declare(Topology(queues=(Queue("big", ("files",)),)))
    calls = CallCounter(broker.aws.sns, broker.aws.sqs)
    fits = message("files", b"x" * 1000)
    too_big = message("files", b"x" * (256 * 1024 - 50))
    with pytest.raises(MessageTooLarge) as err:
        await broker.publish("files", [fits, too_big])
    assert too_big.id in str(err.value) and "262144" in str(err.value)
    assert calls.count("PublishBatch") == 0


async def test_sqs_takes_up_to_one_mib_sent_straight_to_a_queue(broker):
    await broker.declare(Topology(queues=(Queue("big", ("files",)),)))
    await broker.send("big", [message("files", b"y" * 600_000)])
    with pytest.raises(MessageTooLarge):
        await broker.send("big", [message("files", b"y" * 1_048_576)])
    async with broker.consume("big") as consumer:
        d = await next_delivery(consumer)
        assert len(d.message.body) == 600_000
        await d.ack()


async def test_an_empty_body_is_refused_before_any_call(broker):
    await broker.declare(Topology(queues=(Queue("e", ("files",)),)))
    with pytest.raises(ValueError, match="empty body"):
        await broker.publish("files", [message("files", b"")])


@pytest.mark.parametrize("char", ["x", "é", "😀"])
def test_a_dead_letter_copy_fits_the_limit_however_its_text_escapes(char):
    # Given a message close to the limit and a reason of 2 MiB (JSON escaping of the packed
    # headers makes a non-ASCII character six or twelve bytes on the wire)
    m = message("orders", b"x" * (1_048_576 - 20_000))
    reason = char * (2 * 1_048_576 // len(char.encode()))
    # When its dead-letter copy is made
    dead = wire.dead_letter_copy(m, "q", 3, reason, None, 1_048_576)
    # Then it fits, body intact, with the reason's head
    assert wire.to_wire(dead).size <= 1_048_576
    assert dead.body == m.body
    assert str(dead.headers["x-mailbag-dead-reason"]).startswith(char * 100)
