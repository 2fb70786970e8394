import re

import aio_pika
import pytest

from mailbag.broker import (
    BrokerUrlError,
    Message,
    Queue,
    RetryPolicy,
    Subscription,
    Topology,
    TopologyError,
    connect,
    mask_url,
)
from mailbag.harness import Target
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared


def test_mask_url_hides_the_password_only():
    assert mask_url("amqp://guest:s3cret@rabbit:5672/vhost") == "amqp://guest:***@rabbit:5672/vhost"
    assert mask_url("sqs://?region=eu-west-1") == "sqs://?region=eu-west-1"


async def test_unknown_scheme_is_a_clear_error_with_the_password_masked():
    with pytest.raises(BrokerUrlError) as err:
        await connect("redis://u:pw@host")
    assert "redis" in str(err.value) and "pw@" not in str(err.value)


def test_retry_policy_backoff_and_distinct_delays():
    p = RetryPolicy(max_attempts=5, initial_delay=1, multiplier=2, max_delay=5)
    assert [p.delay(a) for a in range(1, 5)] == [1, 2, 4, 5]
    assert p.delays == (1, 2, 4, 5)
    with pytest.raises(TopologyError):
        RetryPolicy(max_attempts=0)


def test_topology_from_toml(tmp_path):
    path = tmp_path / "topology.toml"
    path.write_text(
        """
topics = ["audit"]
[queues.inventory]
subscribe = ["orders.placed"]
ordered = true
[queues.inventory.retry]
max_attempts = 7
"""
    )
    t = Topology.from_toml(path)
    q = t.queue("inventory")
    assert (q.topics, q.ordered, q.retry.max_attempts, q.dead_letter_queue) == (
        ("orders.placed",),
        True,
        7,
        "inventory.dlq",
    )
    assert t.topics == ("audit", "orders.placed")


def test_bad_topology_fails_at_construction():
    with pytest.raises(TopologyError, match="invalid queue name"):
        Queue("has space")
    with pytest.raises(TopologyError, match="both a queue and a dead-letter queue"):
        Topology(queues=(Queue("a"), Queue("a.dlq")))
    with pytest.raises(TopologyError, match="unknown setting"):
        Topology.from_dict({"queues": {"q": {"subscribe": ["t"], "colour": "red"}}})


@pytest.mark.parametrize(
    "url",
    [
        "memory://?prefetch=5",
        "memory://?queue=quorum",  # queue types are RabbitMQ's (`mailbag compare` refuses it too)
        "amqps://guest:guest@127.0.0.1/?heartbeats=5",
        "sqs://?region=eu-west-1&queue=quorum",
    ],
)
async def test_unknown_url_options_are_refused_on_every_scheme(url):
    with pytest.raises(BrokerUrlError, match="unknown option"):
        await connect(url)


async def test_a_url_split_by_an_unencoded_password_is_refused_before_any_connection():
    with pytest.raises(BrokerUrlError, match="does not parse") as err:
        await connect("amqp://app:s3c@r/t!@rabbit.internal:5672/orders")
    assert "s3c" not in str(err.value) and "%40" in str(err.value)


def cluster_url(query: str = "") -> str:
    """The suite's RabbitMQ as the second node of a node list whose first node is down."""
    return amqp_url().replace("127.0.0.1:5672", "127.0.0.1:1,127.0.0.1:5672") + query


async def test_a_node_list_url_connects_to_the_first_node_that_answers():
    # Given a URL listing a node nothing listens on, then the suite's RabbitMQ
    broker = await connect(cluster_url())
    try:
        # Then connect() takes it, and the broker is on the node that answered, and works
        assert broker.node == "127.0.0.1:5672"
        name = run_name("nl")
        await broker.declare(Topology(queues=(Queue(name, (Subscription(name),)),)))
        await broker.publish(name, [Message(name, b"{}")])
        assert (await broker.stats(name)).ready == 1
    finally:
        await remove_declared(broker)
        await broker.close()


@pytest.mark.parametrize(
    "url, says",
    [
        ("amqp://u:hunter2@h1:5672,h2:x/v", "does not parse (bad port)"),
        ("amqp://u:hunter2@h1:5672,,h3:5672/v", "empty host in its node list"),
        ("amqp://u:hunter2@h1:5672,h2:5672/v?queue=lazy", "queue='lazy'"),
    ],
)
async def test_a_bad_node_list_url_is_refused_the_same_by_connect_and_compare(url, says):
    with pytest.raises(BrokerUrlError, match=re.escape(says)) as by_connect:
        await connect(url)
    with pytest.raises(BrokerUrlError, match=re.escape(says)) as by_compare:
        Target.parse(url)
    assert "hunter2" not in str(by_connect.value) + str(by_compare.value)


async def test_queue_quorum_declares_quorum_queues_through_connect_as_through_compare():
    # Given a queue of the default kind, declared through connect() and through a
    # compare target, both on a URL saying ?queue=quorum
    via_connect, via_compare = run_name("qc"), run_name("qh")
    target = Target.parse(cluster_url("?queue=quorum"))
    broker = await connect(cluster_url("?queue=quorum"))
    compared = await target.open()
    try:
        await broker.declare(Topology(queues=(Queue(via_connect, (Subscription(via_connect),)),)))
        await compared.declare(Topology(queues=(target.queue(via_compare, via_compare),)))
        # Then both are quorum queues: a message put back comes again carrying the
        # quorum queue's x-delivery-count (a classic queue has no such header)
        for name, on in ((via_connect, broker), (via_compare, compared)):
            await on.publish(name, [Message(name, b"{}")])
            assert await _delivery_count_after_a_requeue(name) == 1, name
    finally:
        for b in (broker, compared):
            await remove_declared(b)
            await b.close()


async def _delivery_count_after_a_requeue(queue: str) -> object:
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        first = await source.get(timeout=5)
        await first.nack(requeue=True)
        again = await source.get(timeout=5)
        await again.ack()
        return (again.headers or {}).get("x-delivery-count")
