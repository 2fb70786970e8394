"""A SIGKILLed worker's idempotency claims free up within one lease: the restarted
worker handles the messages the dead one held within 60 s, with few extra deliveries
(each held message is re-checked when the dead run's lease would end, not every second)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailbag.broker import Message
from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import Worker, WorkerSettings
from mailbag.workers.metrics import Metrics
from tests.conformance.env import eventually
from tests.faults import lease_app
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]
HELD = 16


async def test_a_killed_workers_claims_are_handled_by_the_restarted_worker_within_60s(tmp_path):
    # Given a worker process (SQLite store on the host, default lease) holding 16 messages
    # in handlers that would run for ten minutes
    run = run_name("ls")
    ledger, store = str(tmp_path / "ledger.sqlite3"), f"sqlite:///{tmp_path}/idem.sqlite3"
    lease_app.create_ledger(ledger)
    topic = lease_app.topic(run)
    broker = await open_broker(amqp_url())
    await broker.declare(lease_app.build(run, ledger, 0).topology)
    log = (tmp_path / "worker.log").open("w")
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailbag.cli",
            "worker",
            "tests.faults.lease_app:app",
            "--concurrency",
            str(HELD),
            "--broker",
            amqp_url(),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "MAILBAG_TEST_RUN": run,
            "MAILBAG_TEST_DB": ledger,
            "MAILBAG_TEST_HOLD": "600",
            "MAILBAG_IDEMPOTENCY_URL": store,
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    metrics = Metrics()
    try:
        await broker.publish(topic, [Message(topic, b'{"n": %d}' % n) for n in range(HELD)])

        async def all_held() -> bool:
            assert first.poll() is None, (tmp_path / "worker.log").read_text()
            return len(lease_app.runs(ledger)) == HELD

        await eventually(all_held, timeout=30, what="the first worker to hold all 16")
        # When it is SIGKILLed and a new worker starts on the same store
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        settings = WorkerSettings(idempotency_url=store, concurrency=HELD)
        async with Worker(lease_app.build(run, ledger, 0), broker, settings=settings, metrics=metrics):

            async def all_handled_again() -> bool:
                return sum(1 for _, pid in lease_app.runs(ledger) if pid == os.getpid()) >= HELD

            await eventually(all_handled_again, timeout=60, what="the restarted worker to handle all 16")
            took = time.monotonic() - killed
        # Then all 16 were handled within 60 s, with fewer than 100 deliveries that did not run
        postponed = metrics.registry.get_sample_value(
            "mailbag_messages_postponed_total", {"queue": topic, "handler": "build.<locals>.work"}
        )
        print(f"handled {took:.1f}s after the kill; {postponed:g} extra deliveries for {HELD} held messages")
        assert took < 60
        assert postponed is not None and postponed < 100
        assert sorted(n for n, pid in lease_app.runs(ledger) if pid == os.getpid()) == list(range(HELD))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        log.close()
        await broker.close()
        await remove_declared(broker)
