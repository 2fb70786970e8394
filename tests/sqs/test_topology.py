"""How a `Topology` lands on SNS/SQS: subscriptions with raw delivery and filter
policies, queue policies admitting only their topics, redrive to the DLQ, FIFO names,
conflicts named, and the broker's URL options checked."""

import json

import pytest

from mailbag.broker import BrokerUrlError, Queue, RetryPolicy, Subscription, Topology, TopologyError
from mailbag.broker import headers as h
from mailbag.broker.sqs import open_broker
from tests.conformance.env import drain, eventually, next_delivery, nothing_within
from tests.moto_server import REGION
from tests.sqs.helpers import CallCounter, message


async def test_subscription_is_raw_with_a_filter_policy_and_the_queue_admits_only_its_topic(broker, prefix, sns, sqs):
    await broker.declare(Topology(queues=(Queue("eu", (Subscription("orders", {"region": ("eu",)}),)),)))
    [topic_arn] = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f"{prefix}orders")]
    [sub] = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
    assert attrs["RawMessageDelivery"] == "true"
    assert json.loads(attrs["FilterPolicy"]) == {"region": ["eu"]}
    url = sqs.get_queue_url(QueueName=f"{prefix}eu")["QueueUrl"]
    policy = json.loads(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])["Attributes"]["Policy"])
    [statement] = policy["Statement"]
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": [topic_arn]}}
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}


async def test_a_filter_matches_a_numeric_header_as_memory_does(broker):
    await broker.declare(Topology(queues=(Queue("urgent", (Subscription("orders", {"priority": ("5",)}),)),)))
    five, six = message("orders", headers={"priority": 5}), message("orders", headers={"priority": 6})
    await broker.publish("orders", [five, six])
    async with broker.consume("urgent") as consumer:
        [d] = await drain(consumer, 1)
        assert d.message.id == five.id
        assert await nothing_within(consumer, 0.3)


async def test_declaring_twice_makes_no_changes(broker):
    topology = Topology(queues=(Queue("twice", (Subscription("orders", {"region": ("eu",)}),)),))
    await broker.declare(topology)
    calls = CallCounter(broker.aws.sns, broker.aws.sqs)
    await broker.declare(topology)
    assert not {"Subscribe", "SetQueueAttributes"} & set(calls.calls)


async def test_a_conflicting_redeclaration_names_the_queue_and_the_setting(broker):
    await broker.declare(Topology(queues=(Queue("pay", ("orders",), retry=RetryPolicy(max_attempts=3)),)))
    with pytest.raises(TopologyError, match=r"'pay'.*RedrivePolicy"):
        await broker.declare(Topology(queues=(Queue("pay", ("orders",), retry=RetryPolicy(max_attempts=4)),)))
    with pytest.raises(TopologyError, match=r"'pay'.*filter"):
        await broker.declare(
            Topology(
                queues=(Queue("pay", (Subscription("orders", {"a": ("b",)}),), retry=RetryPolicy(max_attempts=3)),)
            )
        )


async def test_an_ordered_queue_is_fifo_and_its_topic_too(broker, prefix, sns, sqs):
    await broker.declare(Topology(queues=(Queue("ledger.v1", ("payments",), ordered=True),)))
    names = [u.rsplit("/", 1)[-1] for u in sqs.list_queues(QueueNamePrefix=prefix)["QueueUrls"]]
    assert sorted(names) == [f"{prefix}ledger_v1.fifo", f"{prefix}ledger_v1_dlq.fifo"]
    assert any(t["TopicArn"].endswith(f"{prefix}payments.fifo") for t in sns.list_topics()["Topics"])
    assert await broker.queue_names() == ["ledger.v1", "ledger.v1.dlq"]


async def test_a_standard_topic_cannot_feed_a_new_ordered_queue(broker):
    await broker.declare(Topology(queues=(Queue("plain", ("payments",)),)))
    with pytest.raises(TopologyError, match="FIFO"):
        await broker.declare(Topology(queues=(Queue("ledger", ("payments",), ordered=True),)))


async def test_a_message_whose_consumers_crash_past_max_attempts_is_dead_lettered_unrun_with_a_reason(broker):
    # Given a queue allowing two attempts
    await broker.declare(Topology(queues=(Queue("crashy", ("orders",), retry=RetryPolicy(max_attempts=2)),)))
    sent = message("orders")
    await broker.publish("orders", [sent])
    # When two consumers in turn die holding it (their close returns it unsettled)
    for attempt in (1, 2):
        crashed = broker.consume("crashy")
        d = await next_delivery(crashed)
        assert d.attempt == attempt
        await crashed.close()
    # Then the next consumer dead-letters it without running it, with the reason (long
    # before SQS's redrive, whose maxReceiveCount has headroom, would move it without one)
    async with broker.consume("crashy") as consumer:
        assert await nothing_within(consumer, 1.5)

    async def dead() -> bool:
        return (await broker.stats("crashy")).dead_letters == 1

    await eventually(dead, what="the message in the DLQ")
    [letter] = await broker.browse("crashy.dlq")
    assert letter.id == sent.id and letter.headers[h.DEAD_REASON] == h.DELIVERY_LIMIT_EXCEEDED
    assert letter.headers[h.ATTEMPTS] == 2


async def test_the_dlq_has_no_dlq_of_its_own(broker):
    await broker.declare(Topology(queues=(Queue("q", ("orders",)),)))
    await broker.send("q.dlq", [message("orders")])
    async with broker.consume("q.dlq") as consumer:
        d = await next_delivery(consumer)
        with pytest.raises(TopologyError):
            await d.dead_letter("again")


@pytest.mark.parametrize(
    "url, complaint",
    [
        ("sqs://?region=eu-west-1&colour=blue", "unknown option"),
        ("sqs://?region=eu-west-1&wait=30", "wait must be between"),
        ("sqs://?region=eu-west-1&visibility=soon", "visibility must be a number"),
        ("sqs://?region=eu-west-1&prefix=dev.", "prefix"),
        ("sqs://eu-west-1", "put settings in the query"),
    ],
)
async def test_bad_urls_are_clear_errors(aws, url, complaint):
    with pytest.raises(BrokerUrlError, match=complaint):
        await open_broker(url)


async def test_no_region_is_a_clear_error(aws, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with pytest.raises(BrokerUrlError, match="region"):
        await open_broker("sqs://")


async def test_the_broker_over_http_on_moto_server(moto_server, prefix):
    from tests.moto_server import delete_prefixed, dummy_aws_credentials

    with dummy_aws_credentials():
        broker = await open_broker(f"sqs://?region={REGION}&endpoint={moto_server}&prefix={prefix}&wait=1")
        try:
            assert broker.url.startswith("sqs://?region=")
            await broker.declare(Topology(queues=(Queue("http", ("orders",)),)))
            await broker.publish("orders", [message("orders")])
            async with broker.consume("http") as consumer:
                assert len(await drain(consumer, 1)) == 1
        finally:
            await broker.close()
            delete_prefixed(moto_server, prefix)
