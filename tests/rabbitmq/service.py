"""The RabbitMQ the tests run against: 127.0.0.1:5672, guest/guest, in the suite's own
vhost (`mailbag-tests`, or `MAILBAG_TEST_VHOST`), so the suite never touches what other
users of the broker keep on theirs. `scripts/services.sh` creates the vhost once when it
is missing; it is never created or deleted per run.

Every name a test run declares starts with the run's own prefix (`tests.names`), so two
pytest sessions sharing the vhost never touch each other's names: tests remove what
they declared (`remove_declared`), and the session's cleanup deletes only names with
its prefix (`tests/conftest.py`).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable

import aio_pika
import pytest

HOST, PORT = "127.0.0.1", 5672
START = "start it with `bash scripts/services.sh` (or `rabbitmq-server -detached`)"
VHOST = os.environ.get("MAILBAG_TEST_VHOST", "mailbag-tests")


def amqp_url(host: str = HOST, port: int = PORT) -> str:
    """The tests' broker URL (through a proxy when `port` says so); fails the calling
    test, saying how to start RabbitMQ, when it is not listening."""
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        pytest.fail(f"RabbitMQ is not running on {HOST}:{PORT}; {START}", pytrace=False)
    return f"amqp://guest:guest@{host}:{port}/{VHOST}"


async def remove_declared(broker) -> None:
    """Delete every queue and exchange `broker` (a `RabbitBroker`) declared or used."""
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        queues = set(broker._specs) | broker._dead_letter_queues | broker._known_queues
        for name in sorted(queues):
            await channel.queue_delete(name)
        for topic in sorted(broker._topics):
            await channel.exchange_delete(topic)
            await channel.exchange_delete(f"{topic}.filter")


def vhost_names() -> tuple[set[str], set[str]] | None:
    """(queues, exchanges) on the test RabbitMQ's vhost, or None when it
    cannot be asked (not running, or no `rabbitmqctl` here)."""
    names = []
    for what in ("list_queues", "list_exchanges"):
        try:
            listed = subprocess.run(
                ["rabbitmqctl", "-q", what, "-p", VHOST, "name"], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        if listed.returncode != 0:
            return None
        names.append({n for n in listed.stdout.split() if n != "name"})
    return names[0], names[1]


def queue_depths(prefix: str) -> dict[str, int]:
    """Every queue of the test vhost whose name starts with `prefix`, and the messages it
    holds (ready and unacked), as `rabbitmqctl` lists them: what no AMQP client can list."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", VHOST, "name", "messages"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if listed.returncode != 0:
        pytest.fail(f"`rabbitmqctl list_queues` failed ({listed.stderr.strip()}); {START}", pytrace=False)
    depths = {}
    for line in listed.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(prefix) and parts[1].isdigit():
            depths[parts[0]] = int(parts[1])
    return depths


async def delete_queues(names: Iterable[str]) -> None:
    """Delete these queues (names a test made and listed with `queue_depths`)."""
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        for name in sorted(names):
            await channel.queue_delete(name)
