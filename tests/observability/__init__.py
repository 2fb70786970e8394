"""Observability tests. `running_worker` runs the app they share (`obs_app`) as an
operator runs it: a `mailbag worker` process on the test RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tests.rabbitmq.service import amqp_url

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running_worker(run: str, *flags: str, stderr: IO[Any], **env: str) -> Iterator[subprocess.Popen]:
    """`mailbag worker tests.observability.obs_app:app FLAGS` for the queues of `run`,
    its log to `stderr`, idempotency in memory, retries without jitter; killed after
    the block if it still runs."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailbag.cli",
            "worker",
            "tests.observability.obs_app:app",
            "--broker",
            amqp_url(),
            *flags,
        ],
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MAILBAG_TEST_RUN": run,
            "MAILBAG_IDEMPOTENCY_URL": "memory://",
            "MAILBAG_RETRY_JITTER": "false",
            **env,
        },
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def stopped(proc: subprocess.Popen) -> int:
    """SIGTERM, as an orchestrator stops a worker; its exit status."""
    proc.send_signal(signal.SIGTERM)
    return await asyncio.to_thread(proc.wait, 30)
