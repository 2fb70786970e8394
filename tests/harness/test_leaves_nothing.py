"""`compare` leaves each broker as it found it: every queue and topic of the run is gone,
no retry waits in RabbitMQ's delay levels for a queue that is gone (an orphan), and
nothing calls a queue after it was removed.

On RabbitMQ the run gets a vhost of its own, created and deleted here, so every message
left in its delay levels is this run's. On moto the run's names carry a prefix of
their own (the adapter's `prefix=`)."""

import logging
from dataclasses import replace

import boto3
import pytest

from mailbag.harness import SCENARIOS, Faults, FaultyBroker, Target, compare
from tests.harness.conftest import FAST, rabbitmqctl
from tests.moto_server import REGION, dummy_aws_credentials, moto_server  # noqa: F401  (fixture)
from tests.names import RUN_PREFIX
from tests.rabbitmq.service import HOST, PORT

#: retries, and some publishes, come back later than asked, as quorum delay levels' may
LATE = Faults(delay=0.2, delay_seconds=1.5, seed=12)
#: the listening window is not under test here; the patience follows the brokers' timing
SETTINGS = replace(FAST, retry_delay=0.5, grace=0.5, idle_timeout=None)


#: what a call to a queue or exchange that is gone logs (SQS, RabbitMQ, the harness's own removal)
GONE = ("NonExistentQueue", "QueueDoesNotExist", "NOT_FOUND", "could not remove")


def calls_to_gone_names(caplog) -> list[str]:
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("mailbag") and r.levelno >= logging.WARNING]
    return [text for text in logged if any(word in text for word in GONE)]


@pytest.mark.timeout(400)  # two brokers, every scenario, a real crash each
async def test_compare_on_rabbitmq_classic_and_quorum_leaves_no_queue_and_no_retry_behind(own_vhost, caplog):
    # Given a vhost of the run's own, and retries that come back later than asked
    url = f"amqp://guest:guest@{HOST}:{PORT}/{own_vhost}"
    targets = [Target.parse(url), Target.parse(f"{url}?queue=quorum")]
    # When every scenario runs on classic and quorum queues
    report = await compare(targets, settings=SETTINGS, wrap=lambda broker, target: FaultyBroker(broker, LATE))
    assert [r.error for r in report.results] == [None] * 2 * len(SCENARIOS)
    assert sum(r.lost for r in report.results) == 0, [f.text for r in report.results for f in r.findings]
    # Then the vhost holds only the delay levels, for both kinds (the retries went through them)
    depths = {}
    for line in rabbitmqctl("list_queues", "-p", own_vhost, "name", "messages").splitlines()[1:]:
        name, messages = line.split()
        depths[name] = int(messages)
    assert {"mailbag.delay.0", "mailbag.delay.quorum.0"} <= set(depths)
    assert all(name.startswith("mailbag.delay.") for name in depths), depths
    # And no message waits in them: no retry was left for a queue that is gone
    assert {name: n for name, n in depths.items() if n} == {}
    # And only the delay levels' exchanges are left
    exchanges = set(rabbitmqctl("list_exchanges", "-p", own_vhost, "name").split()[1:])
    assert {e for e in exchanges if not e.startswith(("amq.", "mailbag.delay."))} == set()
    assert calls_to_gone_names(caplog) == []


@pytest.mark.timeout(400)  # two brokers, every scenario, on a moto that answers tens of calls a second
async def test_compare_on_moto_standard_and_fifo_leaves_no_queue_and_calls_none_removed(moto_server, caplog):  # noqa: F811
    # Given moto, the run's names under a prefix of their own, and a short visibility
    # timeout and long poll so that the timing-derived patience stays short
    prefix = f"{RUN_PREFIX}cmp-"
    url = f"sqs://?region={REGION}&endpoint={moto_server}&prefix={prefix}&visibility=5&wait=1"
    targets = [Target.parse(url), Target.parse(f"{url}&fifo=1")]
    with dummy_aws_credentials():
        # When every scenario runs on a standard and a FIFO queue
        report = await compare(targets, settings=replace(SETTINGS, messages=20))
        # Then nothing was lost, though a FIFO long poll holds a freed group back until it ends
        assert [r.error for r in report.results] == [None] * 2 * len(SCENARIOS)
        assert sum(r.lost for r in report.results) == 0, [f.text for r in report.results for f in r.findings]
        # And no queue or topic of the run is left
        sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
        sns = boto3.client("sns", region_name=REGION, endpoint_url=moto_server)
        assert sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", []) == []
        topics = [t["TopicArn"] for t in sns.list_topics().get("Topics", [])]
        assert [t for t in topics if t.rsplit(":", 1)[-1].startswith(prefix)] == []
    # And nothing called a queue that was gone (no NonExistentQueue, no failed visibility change)
    assert calls_to_gone_names(caplog) == []
