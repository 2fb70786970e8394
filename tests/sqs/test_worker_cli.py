"""`mailbag worker` on SNS/SQS as an operator runs it: its lines are its own, and SIGINT
stops it promptly although a 20-second long poll is in flight."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials

APP = "mailbag.examples.orders.app:app"


@contextmanager
def worker(moto_server: str, prefix: str, **env: str) -> Iterator[subprocess.Popen]:
    """The order-flow app's worker, long-polling for 20 s at a time."""
    url = f"sqs://?region={REGION}&endpoint={moto_server}&prefix={prefix}&wait=20"
    process = subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", "worker", APP, "--broker", url],
        env={
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "MAILBAG_IDEMPOTENCY_URL": "memory://",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with dummy_aws_credentials():
            delete_prefixed(moto_server, prefix)


def lines_until(process: subprocess.Popen, text: str) -> list[str]:
    lines: list[str] = []
    while not any(text in line for line in lines):
        line = process.stdout.readline()
        assert line, f"the worker ended before printing {text!r}: {''.join(lines)}"
        lines.append(line)
    return lines


def test_sigint_stops_an_sqs_worker_in_the_middle_of_a_long_poll(moto_server, prefix):
    # Given a worker whose consumers have sent their 20 s long polls (botocore's DEBUG
    # line for each request says when)
    with worker(moto_server, prefix, MAILBAG_LOG_LEVEL="DEBUG") as process:
        lines_until(process, "OperationModel(name=ReceiveMessage)")
        # When SIGINT arrives
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        # Then it exits 0, long before the poll would have returned
        assert process.wait(timeout=15) == 0
        took = time.monotonic() - interrupted
    print(f"SIGINT to exit: {took:.2f}s")
    assert took < 5, f"took {took:.1f}s to stop"


def test_an_sqs_worker_prints_only_its_own_lines_and_where_its_records_are(moto_server, prefix):
    with worker(moto_server, prefix) as process:
        started = lines_until(process, "consuming")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        printed = started + process.stdout.read().splitlines()
    assert "idempotency records in memory://" in started[0], started[0]
    # no botocore "Found credentials", no third-party line at all
    assert all(" mailbag" in line for line in printed if line.strip()), printed
