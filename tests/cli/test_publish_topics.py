"""`mailbag publish` to a topic no queue takes, the same on RabbitMQ and on SNS/SQS
(moto over HTTP): refused in one line, nothing created, unless `--declare`, which
creates the topic and publishes; what no queue takes is then dropped and the warning
names the flag. (`memory://` is refused by `publish` altogether: see test_errors.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from mailbag.broker import Broker, Queue, Topology, connect
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared


def mailbag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailbag.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["amqp", "sqs"])
async def broker_url(request) -> AsyncIterator[tuple[str, Broker]]:
    """A broker URL the CLI publishes to, and a broker of the test on it, cleaned after."""
    if request.param == "amqp":
        url = amqp_url()
        broker = await connect(url)
        yield url, broker
        await broker.close()
        await remove_declared(broker)
        return
    with dummy_aws_credentials():
        prefix = run_name("pub")
        endpoint = shared_moto_server()
        url = f"sqs://?region={REGION}&endpoint={endpoint}&prefix={prefix}&wait=1"
        broker = await connect(url)
        try:
            yield url, broker
        finally:
            await broker.close()
            delete_prefixed(endpoint, prefix)


def one_line(result: subprocess.CompletedProcess, says: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert says in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


async def test_a_topic_no_queue_takes_is_refused_unless_declare(broker_url):
    url, broker = broker_url
    topic = run_name("t")
    # Given a topic nothing declared: refused, and it stays undeclared
    for _ in range(2):
        one_line(mailbag("publish", topic, '{"n": 1}', "--broker", url), "does not exist")
    # When --declare: the topic is created and the message, which no queue takes, dropped
    declared = mailbag("publish", topic, '{"n": 1}', "--declare", "--broker", url)
    await broker.declare(Topology(topics=(topic,)))  # known to the test's broker, so it is removed after
    assert declared.returncode == 0, declared.stderr
    assert declared.stdout == ""
    [warning] = declared.stderr.strip().splitlines()
    assert "no queue takes topic" in warning and "1 message(s) dropped" in warning and "--declare" in warning
    assert "mandatory=True" not in declared.stderr
    # Then without --declare the existing topic is still refused: no queue takes it
    one_line(mailbag("publish", topic, '{"n": 1}', "--broker", url), "no queue takes messages published to topic")


async def test_a_topic_a_queue_takes_is_published_and_the_ids_printed(broker_url, tmp_path):
    url, broker = broker_url
    topic = run_name("t")
    await broker.declare(Topology(queues=(Queue(topic, (topic,)),)))
    result = mailbag("publish", topic, '{"n": 1}', "--count", "3", "--broker", url)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    ids = result.stdout.split()
    ids_file = tmp_path / "ids.txt"
    to_file = mailbag("publish", topic, '{"n": 2}', "--broker", url, "--ids-out", str(ids_file))
    assert to_file.returncode == 0 and to_file.stdout == "", to_file.stderr
    assert to_file.stderr.strip() == f"confirmed 1 of 1 message(s); ids in {ids_file}"
    ids += ids_file.read_text().split()
    held = await broker.browse(topic)
    assert sorted(m.id for m in held) == sorted(ids) and len(set(ids)) == 4
