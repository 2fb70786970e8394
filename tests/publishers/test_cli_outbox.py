"""`mailbag outbox relay|status|prune`, run as a user runs it."""

import signal
import sqlite3
import subprocess
import sys

import pytest

from mailbag.publishers.outbox import SqliteOutbox
from tests.conformance.env import eventually


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
