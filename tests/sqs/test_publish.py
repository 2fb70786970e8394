"""Publishing in batches of ten: partial batch failures are retried, and what never
gets through is named in `PublishFailed`.

moto never fails part of a batch on its own, so these tests rewrite the parsed
`PublishBatch` answer in a botocore `after-call` hook: the call really happened, the
client is told some entries failed, as AWS does under throttling."""

import pytest

from mailbag.broker import BrokerError, PublishFailed, Queue, Topology
from mailbag.broker.sqs.adapter import SEND_ATTEMPTS
from tests.conformance.env import drain, nothing_within
from tests.sqs.helpers import CallCounter, message


def fail_entry(client, entry_id: str, times: int) -> None:
    """Report batch entry `entry_id` as failed (server side) for the next `times` calls."""
    left = [times]

    def rewrite(parsed, **_):
        if left[0] == 0:
            return
        moved = [s for s in parsed.get("Successful", []) if s["Id"] == entry_id]
        if moved:
            left[0] -= 1
            parsed["Successful"] = [s for s in parsed["Successful"] if s["Id"] != entry_id]
            parsed.setdefault("Failed", []).append(
                {"Id": entry_id, "Code": "InternalError", "Message": "try again", "SenderFault": False}
            )

    client.meta.events.register("after-call.sns.PublishBatch", rewrite)


async def test_publish_sends_batches_of_ten(broker):
    await broker.declare(Topology(queues=(Queue("bulk", ("orders",)),)))
    calls = CallCounter(broker.aws.sns)
    sent = [message("orders") for _ in range(25)]
    await broker.publish("orders", sent)
    assert calls.count("PublishBatch") == 3
    async with broker.consume("bulk", prefetch=10) as consumer:
        got = await drain(consumer, 25)
    assert {d.message.id for d in got} == {m.id for m in sent}


async def test_a_partially_failed_batch_is_retried_until_every_entry_is_in(broker):
    # Given SNS failing entry 3 of the next batch once
    await broker.declare(Topology(queues=(Queue("bulk", ("orders",)),)))
    fail_entry(broker.aws.sns, "3", times=1)
    calls = CallCounter(broker.aws.sns)
    sent = [message("orders") for _ in range(10)]
    # When we publish ten
    await broker.publish("orders", sent)
    # Then a second call sent only the failed entry, and every message arrived
    assert calls.count("PublishBatch") == 2
    async with broker.consume("bulk", prefetch=10) as consumer:
        got = await drain(consumer, 10)
    assert {d.message.id for d in got} == {m.id for m in sent}


async def test_an_entry_that_keeps_failing_is_named_in_publish_failed(broker):
    await broker.declare(Topology(queues=(Queue("bulk", ("orders",)),)))
    fail_entry(broker.aws.sns, "3", times=SEND_ATTEMPTS)
    calls = CallCounter(broker.aws.sns)
    sent = [message("orders") for _ in range(10)]
    with pytest.raises(PublishFailed) as err:
        await broker.publish("orders", sent)
    assert err.value.message_ids == [sent[3].id]
    assert "InternalError" in str(err.value)
    assert calls.count("PublishBatch") == SEND_ATTEMPTS


async def test_send_with_a_delay_holds_the_message_back(broker):
    await broker.declare(Topology(queues=(Queue("later", ("orders",)),)))
    sent = message("orders")
    await broker.send("later", [sent], delay=1.2)
    async with broker.consume("later") as consumer:
        assert await nothing_within(consumer, 1.0), "delivered before its delay"
        [d] = await drain(consumer, 1)
    assert d.message.id == sent.id and d.attempt == 1
    with pytest.raises(BrokerError, match="900"):
        await broker.send("later", [sent], delay=901)


async def test_one_publish_keeps_each_keys_order_on_a_standard_queue(broker):
    # Given a standard queue and one call publishing 100 messages of 5 keys, 20 each, keys interleaved
    await broker.declare(Topology(queues=(Queue("orders.audit", ("orders",)),)))
    sent = [message("orders", b'{"key": %d, "n": %d}' % (i % 5, i // 5), ordering_key=f"k{i % 5}") for i in range(100)]
    # When it is published (ten batches, those sharing a key one after another) and read by one consumer
    await broker.publish("orders", sent)
    async with broker.consume("orders.audit", prefetch=100) as consumer:
        got = await drain(consumer, 100)
    # Then each key's messages arrive in the order they were published
    for key in range(5):
        order = [d.message.id for d in got if d.message.ordering_key == f"k{key}"]
        assert order == [m.id for m in sent if m.ordering_key == f"k{key}"]
