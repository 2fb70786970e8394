import pytest

from mailbag.broker import BrokerUrlError
from mailbag.harness import Target


@pytest.mark.parametrize(
    "url, label, broker_url, kind, ordered",
    [
        ("memory://", "memory", "memory://", "classic", False),
        ("memory://?ordered=1", "memory-ordered", "memory://", "classic", True),
        (
            "amqp://guest:guest@127.0.0.1:5672/",
            "rabbitmq-classic",
            "amqp://guest:guest@127.0.0.1:5672/",
            "classic",
            False,
        ),
        # queue= is the adapter's own option too (every queue declared is of that type): it stays
        (
            "amqp://h/?queue=quorum&heartbeat=5",
            "rabbitmq-quorum",
            "amqp://h/?queue=quorum&heartbeat=5",
            "quorum",
            False,
        ),
        (
            "amqp://u:p@h1:5672,h2:5673/v?fifo=1",
            "rabbitmq-classic-ordered",
            "amqp://u:p@h1:5672,h2:5673/v",
            "classic",
            True,
        ),
        (
            "sqs://?endpoint=http://127.0.0.1:5000&fifo=1",
            "sqs-fifo",
            "sqs://?endpoint=http%3A%2F%2F127.0.0.1%3A5000",
            "classic",
            True,
        ),
        ("sqs://?region=eu-west-1", "sqs-standard", "sqs://?region=eu-west-1", "classic", False),
        ("memory://?label=mine&fifo=yes", "mine", "memory://", "classic", True),
    ],
)
def test_harness_options_are_read_and_the_harness_own_removed_from_the_broker_url(
    url, label, broker_url, kind, ordered
):
    target = Target.parse(url)
    assert (target.label, target.broker_url, target.kind, target.ordered) == (label, broker_url, kind, ordered)


def test_queues_get_the_variant_settings():
    queue = Target.parse("amqp://h/?queue=quorum&ordered=1").queue("q", "topic")
    assert (queue.kind, queue.ordered, queue.topics) == ("quorum", True, ("topic",))


@pytest.mark.parametrize(
    "url, says",
    [
        ("amqp://u:hunter2@h/?queue=lazy", "queue='lazy'"),
        ("memory://?fifo=maybe", "fifo"),
        # queue types are RabbitMQ's: refused as `connect()` refuses an unknown option
        ("memory://?queue=quorum", "unknown option(s) queue"),
        ("sqs://?queue=quorum", "unknown option(s) queue"),
        ("amqp://u:hunter2@h1:5672,h2:x/", "bad port"),
    ],
)
def test_a_bad_option_is_named_and_the_password_masked(url, says):
    with pytest.raises(BrokerUrlError) as caught:
        Target.parse(url)
    assert says in str(caught.value) and "hunter2" not in str(caught.value)


def test_display_masks_the_password():
    target = Target.parse("amqp://guest:s3cret@127.0.0.1/?queue=quorum")
    assert "s3cret" not in target.display and "***" in target.display
    assert target.in_process is False and Target.parse("memory://").in_process is True
