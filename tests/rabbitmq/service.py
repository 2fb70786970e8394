"""The RabbitMQ the tests run against: 127.0.0.1:5672, guest/guest, in the suite's own
vhost (`mailbag-tests`, or `MAILBAG_TEST_VHOST`), so the suite never touches what other
users of the broker keep on theirs. `scripts/services.sh` creates the vhost once when it
is missing; it is never created or deleted per run.

Every name a test run declares starts with the run's own prefix (`tests.names`), so two
pytest sessions sharing the vhost never touch each other's names: tests remove what
they declared (`remove_declared`), and the session's cleanup deletes only names with
its prefix (`tests/conftest.py`), and takes the messages delayed for them out of the
vhost's catch-all of orphans (`take_orphans`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiormq
import pytest

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.rabbitmq import open_broker
from mailbag.broker.rabbitmq.delays import ORPHANS, TARGET, UNIT
from tests.names import RUN_PREFIXES, run_name

HOST, PORT = "127.0.0.1", 5672
START = "start it with `bash scripts/services.sh` (or `rabbitmq-server -detached`)"
VHOST = os.environ.get("MAILBAG_TEST_VHOST", "mailbag-tests")


#: orphans of any run older than this are taken too: no test waits for one that long
STALE_ORPHAN = timedelta(minutes=10)
#: the quorum delay levels whose flow a session checks before its tests: 0 to 7, delays up
#: to 1.28 s, which the suite's retries pass through (a higher level's probe would take
#: its whole delay)
PROBED_LEVELS = 8


def listening() -> bool:
    try:
        socket.create_connection((HOST, PORT), timeout=2).close()
    except OSError:
        return False
    return True


def amqp_url(host: str = HOST, port: int = PORT) -> str:
    """The tests' broker URL (through a proxy when `port` says so); fails the calling
    test, saying how to start RabbitMQ, when it is not listening."""
    if not listening():
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


async def wait_for_delay_levels(timeout: float = 300.0) -> float:
    """Declare the test vhost's quorum delay levels as this version lays them out, and
    wait until levels 0 to `PROBED_LEVELS - 1` pass a message each. On a vhost whose
    levels hold orphans from a version without the catch-all they stand still until
    RabbitMQ next retries dead-lettering those (into the catch-all now): up to
    `dead_letter_worker_publisher_confirm_timeout`, 3 minutes by default, once.
    Returns the seconds it took."""
    started = time.monotonic()
    broker = await open_broker(amqp_url())
    probe = Topology(queues=(Queue(run_name("levels"), kind="quorum"),))
    name = probe.queues[0].name
    try:
        await broker.declare(probe)
        for level in range(PROBED_LEVELS):
            await broker.send(name, [Message(name, b"probe")], delay=UNIT * 2**level)
        async with asyncio.timeout(timeout), broker.consume(name, prefetch=PROBED_LEVELS) as consumer:
            for _ in range(PROBED_LEVELS):
                await (await anext(consumer)).ack()
    finally:
        await broker.remove(probe)
        await broker.close()
    return time.monotonic() - started


async def take_orphans(prefix: str) -> int:
    """Take out of the vhost's catch-all of orphaned delayed messages those delayed for
    a queue whose name starts with `prefix` (one run's queues), and those of any run
    orphaned more than `STALE_ORPHAN` ago (a delay outlasts its run: they keep coming
    after the run's own cleanup); the others go back. Returns how many were taken."""
    connection = await aio_pika.connect(amqp_url())
    taken = 0
    stale = datetime.now(UTC) - STALE_ORPHAN
    async with connection:
        channel = await connection.channel()
        try:
            kept = await channel.declare_queue(ORPHANS, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return 0
        # a message got and not acked is not got again: the loop ends when all were seen
        while (raw := await kept.get(no_ack=False, fail=False)) is not None:
            target = raw.headers.get(TARGET)
            target = target.decode() if isinstance(target, bytes) else str(target)
            orphaned_at = _last_death(raw.headers.get("x-death"))
            if target.startswith(prefix) or (RUN_PREFIXES.match(target) and orphaned_at and orphaned_at < stale):
                await raw.ack()
                taken += 1
    return taken  # closing the channel put back what was not taken


def _last_death(deaths: Any) -> datetime | None:
    """When RabbitMQ last dead-lettered a message, from its `x-death` header."""
    times = [d.get("time") for d in deaths if isinstance(d, dict)] if isinstance(deaths, list) else []
    return max((t for t in times if isinstance(t, datetime)), default=None)
