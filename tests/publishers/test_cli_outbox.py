"""`mailbag outbox relay|status|prune`, run as a user runs it."""

import asyncio
import signal
import sqlite3
import subprocess
import sys
import uuid

import aio_pika
import pytest

from mailbag.publishers.outbox import SqliteOutbox
from tests.conformance.env import eventually
from tests.rabbitmq.service import amqp_url


def mailbag(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailbag.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "shop.db"
    outbox = SqliteOutbox(str(path))
    conn = sqlite3.connect(path)
    outbox.create_table(conn)
    with conn:
        for n in range(3):
            outbox.add(conn, "orders", {"n": n}, key="k")
    yield f"sqlite:///{path}", outbox, conn  # sqlite:////abs/shop.db
    conn.close()


def test_relay_once_publishes_what_is_due_then_status_and_prune(db):
    url, _, _ = db
    assert mailbag("outbox", "status", "--db", url).stdout.startswith("pending 3  failing 0  sent 0")

    relayed = mailbag("outbox", "relay", "--db", url, "--broker", "memory://", "--once")
    assert relayed.returncode == 0, relayed.stderr
    assert relayed.stdout.strip() == "sent 3"

    assert mailbag("outbox", "status", "--db", url).stdout.startswith("pending 0  failing 0  sent 3")
    assert mailbag("outbox", "prune", "--db", url, "--older-than", "0").stdout.strip() == "pruned 3"


async def test_relay_runs_until_sigterm_and_picks_up_new_rows(db):
    url, outbox, conn = db
    relay = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailbag.cli",
            "outbox",
            "relay",
            "--db",
            url,
            "--broker",
            "memory://",
            "--poll-interval",
            "0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await eventually(_sent(outbox, 3), timeout=30, what="the first rows sent")
        with conn:
            outbox.add(conn, "orders", {"n": 3})
        await eventually(_sent(outbox, 4), timeout=10, what="the new row sent")
    finally:
        relay.send_signal(signal.SIGTERM)
        code = relay.wait(30)
    assert code == 0, relay.stderr.read()


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ("outbox", "status", "--db", "mysql://app:hunter2@db/shop"),
            "unknown outbox database URL 'mysql://app:***@db/shop'",
        ),
        (("outbox", "status", "--db", "sqlite:shop.db"), "write sqlite:///relative.db, sqlite:////absolute.db"),
        (
            ("outbox", "status", "--db", "postgresql://app:hunter2@127.0.0.1:1/shop"),
            "postgresql://app:***@127.0.0.1:1/shop",
        ),
        (("outbox", "status", "--db", "sqlite:///tmp/x.db", "--table", "t;drop"), "invalid outbox table name"),
        (("outbox", "relay", "--db", "sqlite:///tmp/x.db", "--batch", "0"), "--batch must be at least 1"),
        (("outbox", "prune", "--db", "sqlite:///tmp/x.db"), "--older-than"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(args, says):
    result = mailbag(*args)
    assert result.returncode == 2
    assert says in result.stderr and "hunter2" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _sent(outbox: SqliteOutbox, n: int):
    async def check() -> bool:
        return (await outbox.stats()).sent == n

    return check


async def test_relay_once_exits_1_when_a_row_could_not_be_sent(tmp_path):
    # Given a row for a topic whose name RabbitMQ already holds as a direct exchange:
    # mailbag's fanout exchange cannot be declared, so the row cannot go out
    topic = f"outbox-cli-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "shop.db"
    outbox = SqliteOutbox(str(path))
    conn = sqlite3.connect(path)
    with conn:
        outbox.add(conn, topic, {"n": 1})
    conn.close()
    connection = await aio_pika.connect(amqp_url())
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(topic, aio_pika.ExchangeType.DIRECT, auto_delete=False)
        try:
            # When the relay runs once
            result = await asyncio.to_thread(
                mailbag, "outbox", "relay", "--once", "--db", f"sqlite:///{path}", "--broker", amqp_url()
            )
        finally:
            await channel.exchange_delete(topic)
    # Then nothing was sent, the exit status says so, and the row waits for the next run
    assert result.returncode == 1, result.stderr
    assert result.stdout.strip() == "sent 0"
    assert "could not be sent" in result.stderr
    assert mailbag("outbox", "status", "--db", f"sqlite:///{path}").stdout.startswith("pending 1  failing 1")
