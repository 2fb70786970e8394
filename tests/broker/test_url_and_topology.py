import pytest

from mailbag.broker import BrokerUrlError, Queue, RetryPolicy, Topology, TopologyError, connect, mask_url


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
        "amqp://guest:guest@127.0.0.1/?queue=quorum",  # a `mailbag compare` option, not the adapter's
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
