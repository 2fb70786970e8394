"""`mailbag dlq` run as an operator runs it: a subprocess against a real RabbitMQ (a
memory broker does not outlive its process), killed half-way for the worst case."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter

import pytest

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.rabbitmq import open_broker
from tests.conformance.env import drain, eventually
from tests.dlq.conftest import dead_letter_all
from tests.rabbitmq.service import amqp_url


def mailbag(*args: str, broker: str = "memory://", columns: int = 200) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAILBAG_BROKER_URL": broker, "COLUMNS": str(columns)},
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (("dlq", "purge", "orders", "--all"), "add --yes"),
        (("dlq", "purge", "orders", "--yes"), "say which messages: --id ID (repeat), --all, or --where EXPR"),
        (("dlq", "replay", "orders"), "say which messages"),
        (("dlq", "replay", "orders", "--id", "a", "--all"), "not both"),
        (("dlq", "replay", "orders", "--where", "tries > 3"), "unknown name 'tries'"),
        (("dlq", "replay", "orders", "--where", "__import__('os')"), "unknown name '__import__'"),
        (("dlq", "replay", "--from", "missing.jsonl", "--all"), "--from replays a file"),
        (("dlq", "replay", "--from", "/nonexistent/dead.jsonl"), "No such file"),
        (("dlq", "replay", "orders", "--all", "--rate", "0"), "must be greater than 0"),
        (("dlq", "ls", "orders"), "memory:// lives inside one process"),
        (("dlq", "show", "orders"), "the following arguments are required: MESSAGE_ID"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(args, says):
    result = mailbag(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
async def rabbit():
    """This run's RabbitMQ vhost: (URL, broker, a fresh queue with its DLQ)."""
    url = amqp_url()
    broker = await open_broker(url)
    queue = Queue(f"dlq-cli-{os.urandom(4).hex()}")
    await broker.declare(Topology(queues=(queue,)))
    try:
        yield url, broker, queue
    finally:
        await broker.close()


async def test_ls_show_export_purge_and_replay_from_file_on_rabbitmq(rabbit, tmp_path):
    # Given three dead letters
    url, broker, queue = rabbit
    sent = await dead_letter_all(
        broker, queue.name, [Message("orders", b'{"n": %d}' % i, headers={"n": i}) for i in range(3)]
    )
    export = tmp_path / "dead.jsonl"

    # When the operator lists and inspects them
    listed = mailbag("dlq", "ls", queue.name, "--json", broker=url)
    table = mailbag("dlq", "ls", queue.dead_letter_queue, broker=url)
    shown = mailbag("dlq", "show", queue.name, sent[1].id, broker=url)

    # Then each shows its reason, error and attempts, and nothing was consumed
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert [r["message"]["id"] for r in records] == [m.id for m in sent]
    assert all(
        r["reason"] == "poisoned in a test" and r["error_type"] == "ValueError" and r["attempts"] == 1 for r in records
    )
    assert "poisoned in a test" in table.stdout and "3 of 3" in table.stdout
    assert shown.returncode == 0 and f"bad payload {sent[1].id}" in shown.stdout and "traceback" in shown.stdout
    assert (await broker.stats(queue.name)).dead_letters == 3

    # When they are exported, purged (refused without --yes) and replayed from the file
    assert "exported 3" in mailbag("dlq", "export", queue.name, "--out", str(export), broker=url).stdout
    assert mailbag("dlq", "purge", queue.name, "--all", broker=url).returncode == 2
    assert (await broker.stats(queue.name)).dead_letters == 3
    assert "purged 3" in mailbag("dlq", "purge", queue.name, "--all", "--yes", broker=url).stdout
    replayed = mailbag("dlq", "replay", "--from", str(export), broker=url)

    # Then the queue holds each message once, as it was, and the DLQ is empty
    assert replayed.returncode == 0 and "replayed 3" in replayed.stdout, replayed.stderr
    async with broker.consume(queue.name) as consumer:
        got = [d.message for d in await drain(consumer, 3)]
    assert [(m.id, m.body, m.headers) for m in got] == [(m.id, m.body, m.headers) for m in sent]
    assert (await broker.stats(queue.name)).dead_letters == 0


async def test_replay_killed_half_way_loses_nothing_on_rabbitmq(rabbit):
    # Given 40 dead letters and a replay slowed to 20 a second
    url, broker, queue = rabbit
    sent = await dead_letter_all(broker, queue.name, [Message("orders", b"%d" % i) for i in range(40)])
    everything = {m.id for m in sent}
    replay = subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", "dlq", "replay", queue.name, "--all", "--rate", "20", "--broker", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    # When it is killed with SIGKILL once some messages are back in the queue
    try:
        await eventually(lambda: _ready_at_least(broker, queue.name, 10), timeout=30, what="a replay under way")
    finally:
        replay.send_signal(signal.SIGKILL)
        replay.wait(timeout=30)

    # Then every message is in the queue or the DLQ (at worst in both: one batch)
    async def nothing_lost() -> bool:
        return set(await _ids(broker, queue.name)) | set(await _ids(broker, queue.dead_letter_queue)) == everything

    await eventually(nothing_lost, timeout=30, what="every message back in the queue or the DLQ")
    in_queue = await _ids(broker, queue.name)
    assert 10 <= sum(in_queue.values()) < 40

    # When the replay is run again to the end
    finished = mailbag("dlq", "replay", queue.name, "--all", broker=url)

    # Then the DLQ is empty and the queue has every id, duplicates at most one batch
    assert finished.returncode == 0, finished.stderr
    assert (await broker.stats(queue.name)).dead_letters == 0
    in_queue = await _ids(broker, queue.name)
    assert set(in_queue) == everything and sum(in_queue.values()) <= 40 + 10


async def _ready_at_least(broker, queue: str, n: int) -> bool:
    return (await broker.stats(queue)).ready >= n


async def _ids(broker, queue: str) -> Counter:
    return Counter(m.id for m in await broker.browse(queue, limit=1000))


async def test_ls_fits_80_columns_json_bodies_read_as_json_and_purge_where_works(rabbit):
    # Given two dead letters with a JSON body and one with a text body
    url, broker, queue = rabbit
    sent = await dead_letter_all(
        broker,
        queue.name,
        [
            Message("orders.placed", b'{"job_id": 1}', content_type="application/json"),
            Message("orders.placed", b'{"job_id": 2}', content_type="application/json"),
            Message("orders.placed", b"plain words", content_type="text/plain"),
        ],
    )

    # When they are listed on an 80-column terminal, wide, and as JSON
    narrow = mailbag("dlq", "ls", queue.name, broker=url, columns=80)
    wide = mailbag("dlq", "ls", queue.name, "--wide", broker=url, columns=80)
    listed = json.loads(mailbag("dlq", "ls", queue.name, "--json", broker=url).stdout)

    # Then no line is longer than 80, nothing is cut short, and each id and reason is whole
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    assert "…" not in narrow.stdout
    assert all(m.id in narrow.stdout for m in sent)
    assert "poisoned in a" in narrow.stdout and "--wide" in narrow.stdout
    assert "from queue" in wide.stdout and queue.name in wide.stdout
    assert [r["message"]["body"] for r in listed] == [{"job_id": 1}, {"job_id": 2}, "cGxhaW4gd29yZHM="]
    assert [r["message"]["body_encoding"] for r in listed] == ["json", "json", "base64"]

    # When the operator purges by expression, as docs/dlq.md shows
    purged = mailbag("dlq", "purge", queue.name, "--where", 'content_type == "text/plain"', "--yes", broker=url)

    # Then exactly the matching dead letter is gone
    assert purged.returncode == 0 and "purged 1" in purged.stdout, purged.stderr
    left = json.loads(mailbag("dlq", "ls", queue.name, "--json", broker=url).stdout)
    assert [r["message"]["id"] for r in left] == [m.id for m in sent[:2]]


async def test_show_tells_a_single_failure_time_from_first_and_last(rabbit):
    # Given a dead letter that mailbag stamped when it gave up (one time recorded)
    url, broker, queue = rabbit
    (sent,) = await dead_letter_all(broker, queue.name, [Message("orders", b"{}")])
    # When it is shown
    shown = mailbag("dlq", "show", queue.name, sent.id, broker=url)
    # Then the one time is shown as when it was dead-lettered, not as first and last failure
    assert shown.returncode == 0, shown.stderr
    assert "dead-lettered" in shown.stdout
    assert "first failed" not in shown.stdout
