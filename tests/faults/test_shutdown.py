"""A worker told to stop while RabbitMQ is unreachable (its connection blackholed: open,
silent) still exits: within the grace period plus 5 s after SIGTERM, and within 2 s
of a second signal, with exit status 1."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from mailbag.broker import Message
from mailbag.broker.rabbitmq import open_broker
from tests.conformance.env import eventually
from tests.faults import slow_app
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]
GRACE = 3.0


@dataclass
class Running:
    proc: subprocess.Popen
    proxy: CuttingProxy
    started: Path

    async def exit_within(self, seconds: float) -> tuple[int | None, float]:
        """The exit status (None if still running after `seconds`) and the time taken."""
        began = time.monotonic()
        try:
            status = await asyncio.to_thread(self.proc.wait, seconds)
        except subprocess.TimeoutExpired:
            status = None
        return status, time.monotonic() - began


@asynccontextmanager
async def worker_in_flight(tmp_path: Path, grace: float) -> AsyncIterator[Running]:
    """A `mailbag worker` process reaching RabbitMQ through a proxy, with a handler in
    flight that would run for ten minutes."""
    run = run_name("sd")
    app = slow_app.build(run)
    broker = await open_broker(amqp_url())
    await broker.declare(app.topology)
    started = tmp_path / "started.txt"
    started.touch()
    log = (tmp_path / "worker.log").open("w")
    try:
        async with CuttingProxy(HOST, PORT) as proxy:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mailbag.cli",
                    "worker",
                    "tests.faults.slow_app:app",
                    *("--broker", amqp_url(port=proxy.port)),
                    *("--grace-period", str(grace), "--concurrency", "2"),
                ],
                cwd=ROOT,
                env={
                    **os.environ,
                    "MAILBAG_TEST_RUN": run,
                    "MAILBAG_TEST_STARTED": str(started),
                    "MAILBAG_IDEMPOTENCY_URL": "memory://",
                },
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                await broker.publish(slow_app.topic(run), [Message(slow_app.topic(run), b"{}") for _ in range(3)])

                async def both_started() -> bool:
                    assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                    return len(started.read_text().split()) >= 2

                await eventually(both_started, timeout=30, what="two handlers to start")
                yield Running(proc, proxy, started)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        log.close()
        await broker.close()
        await remove_declared(broker)


async def test_sigterm_with_the_broker_blackholed_exits_within_the_grace_period_plus_5s(tmp_path):
    # Given a worker with handlers in flight, and then the network to RabbitMQ silently dropping everything
    async with worker_in_flight(tmp_path, GRACE) as running:
        running.proxy.blackhole = True
        # When it gets SIGTERM
        running.proc.send_signal(signal.SIGTERM)
        # Then it exits 0 within the grace period plus 5 s
        status, took = await running.exit_within(GRACE + 5)
        assert status == 0, f"exit status {status} after {took:.1f}s"
        print(f"exited {took:.2f}s after SIGTERM (grace {GRACE:g}s)")


async def test_a_second_signal_with_the_broker_blackholed_exits_within_2s_with_status_1(tmp_path):
    # Given a worker with a long grace period, handlers in flight and a blackholed network
    async with worker_in_flight(tmp_path, 60) as running:
        running.proxy.blackhole = True
        # When it gets SIGTERM, and a second one while it waits for the handlers
        running.proc.send_signal(signal.SIGTERM)
        status, _ = await running.exit_within(0.5)
        assert status is None, "exited before the grace period was over"
        running.proc.send_signal(signal.SIGTERM)
        # Then it exits within 2 s of the second signal, with status 1
        status, took = await running.exit_within(2)
        assert status == 1, f"exit status {status} after {took:.1f}s"
        print(f"exited {took:.2f}s after the second signal")
