"""Workers as separate processes on a real broker, killed and stopped the hard ways.

A broker shared between processes is needed, so these run on every URL in
`CROSS_PROCESS_BROKERS` (the one list to extend when an adapter can run them)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mailbag.broker import Message, connect
from tests.conformance.env import eventually
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared
from tests.workers.conftest import require
from tests.workers.proc_app import build

#: (test id, broker URL, service it needs)
CROSS_PROCESS_BROKERS = [("rabbitmq", amqp_url, "rabbitmq")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=CROSS_PROCESS_BROKERS, ids=[b[0] for b in CROSS_PROCESS_BROKERS])
async def run(request, tmp_path):
    name, broker_url, service = request.param
    require(service)
    url = broker_url()
    r = Run(url, tmp_path)
    r.broker = await connect(url)
    await r.broker.declare(r.app.topology)
    try:
        yield r
    finally:
        r.kill_all()
        if name == "rabbitmq":
            await remove_declared(r.broker)
        await r.broker.close()


class Run:
    """One test's worker processes, queues and ledger."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.id = run_name("t")
        self.app = build(self.id)
        self.db = tmp_path / "ledger.sqlite3"
        self.logs = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.log_files: list = []
        with sqlite3.connect(self.db) as db:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("CREATE TABLE ledger (n INTEGER NOT NULL, pid INTEGER NOT NULL)")

    def queue(self, handler: str) -> str:
        return f"{self.id}.{handler}"

    def start(self, handler: str, *, concurrency: int = 8, grace: float = 30, work: float = 0.01) -> subprocess.Popen:
        log = open(self.logs / f"worker-{len(self.procs)}.log", "w")
        self.log_files.append(log)
        env = {
            **os.environ,
            "MAILBAG_TEST_RUN": self.id,
            "MAILBAG_TEST_DB": str(self.db),
            "MAILBAG_TEST_WORK": str(work),
            "MAILBAG_IDEMPOTENCY_URL": f"sqlite:///{self.db}",
            "PYTHONPATH": str(ROOT),
        }
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailbag.cli",
                "worker",
                "tests.workers.proc_app:app",
                "--broker",
                self.url,
                "--queue",
                self.queue(handler),
                "--concurrency",
                str(concurrency),
                "--grace-period",
                str(grace),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    async def publish(self, handler: str, messages: list[Message]) -> None:
        for i in range(0, len(messages), 50):
            await self.broker.publish(self.queue(handler), messages[i : i + 50])

    def messages(self, handler: str, count: int) -> list[Message]:
        return [Message(self.queue(handler), b'{"n": %d}' % n) for n in range(count)]

    def ledger(self) -> Counter:
        with sqlite3.connect(self.db, timeout=30) as db:
            return Counter(n for (n,) in db.execute("SELECT n FROM ledger"))

    def workers_in_ledger(self) -> set[int]:
        with sqlite3.connect(self.db, timeout=30) as db:
            return {pid for (pid,) in db.execute("SELECT DISTINCT pid FROM ledger")}

    async def ledger_has(self, at_least: int) -> bool:
        """At least this many side effects, counting repeats."""
        return sum((await asyncio.to_thread(self.ledger)).values()) >= at_least

    async def ledger_covers(self, count: int) -> bool:
        """Every message 0..count-1 has its side effect. (Waiting on the queue to look
        empty is not enough: RabbitMQ does not count what a consumer holds unacked.)"""
        return len(await asyncio.to_thread(self.ledger)) >= count

    async def drained(self, handler: str) -> bool:
        s = await self.broker.stats(self.queue(handler))
        return s.ready == 0 and not s.in_flight and not s.delayed

    def output(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.logs.glob("worker-*.log")))

    async def exit_code(self, proc: subprocess.Popen, timeout: float = 60) -> int:
        try:
            return await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit within {timeout}s:\n{self.output()}") from None

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in self.log_files:
            log.close()


async def test_a_worker_killed_mid_load_and_restarted_applies_every_message_exactly_once(run):
    # Given 300 messages for a handler that writes in the SQLite idempotency transaction
    await run.publish("book", run.messages("book", 300))
    # When its worker is SIGKILLed mid-load, then a new one starts
    first = run.start("book")
    await eventually(lambda: run.ledger_has(60), timeout=60, what=f"progress before the kill:\n{run.output()}")
    first.send_signal(signal.SIGKILL)
    assert await run.exit_code(first) == -signal.SIGKILL
    killed_at = sum(run.ledger().values())
    assert killed_at < 300, "the load was over before the kill; the test proves nothing"
    second = run.start("book")
    await eventually(lambda: run.ledger_covers(300), timeout=90, what=f"every side effect:\n{run.output()}")
    await eventually(lambda: run.drained("book"), timeout=30, what=f"the queue to drain:\n{run.output()}")
    second.send_signal(signal.SIGTERM)
    assert await run.exit_code(second) == 0
    # Then every message's side effect exists exactly once
    ledger = run.ledger()
    missing = sorted(set(range(300)) - set(ledger))
    assert not missing, (
        f"never applied: {missing}; dead letters: {await run.broker.stats(run.queue('book') + '.dlq')}\n{run.output()}"
    )
    assert max(ledger.values()) == 1, f"applied twice: {[n for n, c in ledger.items() if c > 1]}"


async def test_sigterm_under_load_exits_0_loses_nothing_and_handles_nothing_twice(run):
    # Given a worker busy on a backlog, with no idempotency to hide a double run
    await run.publish("tally", run.messages("tally", 400))
    worker = run.start("tally", concurrency=8, work=0.02)
    await eventually(lambda: run.ledger_has(50), timeout=60, what=f"progress:\n{run.output()}")
    # When it gets SIGTERM
    worker.send_signal(signal.SIGTERM)
    # Then it exits 0 with what it took handled or given back
    assert await run.exit_code(worker) == 0, run.output()
    stopped_at = sum(run.ledger().values())
    assert stopped_at < 400, "the load was over before the signal; the test proves nothing"
    # And a second worker finishes the rest: each message handled exactly once overall
    rest = run.start("tally")
    await eventually(lambda: run.ledger_covers(400), timeout=90, what=f"the rest:\n{run.output()}")
    await eventually(lambda: run.drained("tally"), timeout=30, what="the queue to drain")
    rest.send_signal(signal.SIGTERM)
    assert await run.exit_code(rest) == 0
    ledger = run.ledger()
    assert sorted(ledger) == list(range(400)) and max(ledger.values()) == 1


async def test_two_workers_handed_the_same_messages_at_once_apply_each_once(run):
    # Given two workers sharing the SQLite idempotency store
    a, b = run.start("charge", concurrency=4, work=0.2), run.start("charge", concurrency=4, work=0.2)
    # When every message is delivered twice at the same moment
    messages = run.messages("charge", 40)
    await run.publish("charge", [m for m in messages for _ in range(2)])
    await eventually(lambda: run.ledger_covers(40), timeout=60, what=f"the side effects:\n{run.output()}")
    await eventually(lambda: run.drained("charge"), timeout=60, what=f"both copies settled:\n{run.output()}")
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
    assert [await run.exit_code(p) for p in (a, b)] == [0, 0]
    # Then each side effect happened once, and both workers did some of the work
    ledger = run.ledger()
    assert sorted(ledger) == list(range(40)) and max(ledger.values()) == 1
    assert len(run.workers_in_ledger()) == 2
