"""The command line, run as a user runs it: a subprocess, its exit status and output."""

import subprocess
import sys
import uuid

import pytest

from mailbag.broker import Queue, Topology, connect
from tests.rabbitmq.service import amqp_url, remove_declared


def mailbag(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args], input=stdin, capture_output=True, text=True, timeout=60, env=env
    )


def test_help_lists_every_command():
    out = mailbag("--help").stdout
    for command in ("demo", "worker", "publish", "queues", "topology"):
        assert command in out


def test_demo_runs_the_order_flow_and_one_payment_fails():
    result = mailbag("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "card declined" in out and "released the reservation" in out
    assert "2 confirmed, 1 cancelled" in out
    assert out.count("customer told") == 3


@pytest.mark.parametrize(
    "args, says",
    [
        (("queues", "--broker", "kafka://u:hunter2@host"), "unknown broker URL scheme 'kafka'"),
        (("worker", "no_such_module:app"), "cannot import module 'no_such_module'"),
        (("worker", "justamodule"), "MODULE:APP"),
        (("publish", "t", "{}", "--header", "oops"), "key=value"),
        (("publish", "t", "{}", "--count", "x"), "invalid int value"),
        (("demo", "--orders", "0"), "--orders must be at least 1"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, says):
    result = mailbag(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


async def test_publish_prints_one_id_per_message_and_reads_json_lines_from_stdin():
    # Given a queue on RabbitMQ subscribed to a fresh topic
    topic = f"cli-{uuid.uuid4().hex[:8]}"
    broker = await connect(amqp_url())
    try:
        await broker.declare(Topology(queues=(Queue(topic, (topic,)),)))
        # When JSON lines come on stdin, and a text body is sent --raw
        result = mailbag("publish", topic, "-", "--key", "k", "--broker", amqp_url(), stdin='{"a": 1}\n{"a": 2}\n')
        raw = mailbag("publish", topic, "{not json", "--raw", "--broker", amqp_url())
        # Then each message's id is printed and each is in the queue with its content type
        assert result.returncode == 0 and raw.returncode == 0, result.stderr + raw.stderr
        ids = result.stdout.split() + raw.stdout.split()
        assert len(set(ids)) == 3
        held = await broker.browse(topic)
        assert [(m.id, m.content_type, m.body) for m in held] == [
            (ids[0], "application/json", b'{"a": 1}'),
            (ids[1], "application/json", b'{"a": 2}'),
            (ids[2], "text/plain", b"{not json"),
        ]
    finally:
        await broker.close()
        await remove_declared(broker)


def test_topology_apply_on_memory_and_queues_refused_there():
    result = mailbag("topology", "apply", "mailbag.examples.orders.app:app")
    assert result.returncode == 0, result.stderr
    assert "queue(s)" in result.stdout
    # a memory:// broker lives in one process: another command would see a new, empty one
    result = mailbag("queues", "--app", "mailbag.examples.orders.app:app", "--json")
    assert result.returncode == 2 and "memory:// lives inside one process" in result.stderr, result.stderr
