"""moto over HTTP for tests: one `moto_server` process per test session on a free
port, started on first use and stopped at exit, plus the helpers every SNS/SQS test
needs (dummy credentials, cleaning up what a test created).

Use the `moto_server` fixture (import it into your conftest) or `shared_moto_server()`
where no fixture can reach (conformance backends).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

REGION = "eu-west-1"
_START_TIMEOUT = 20.0
_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class MotoServer:
    """A `moto_server` child process listening on 127.0.0.1."""

    def __init__(self) -> None:
        binary = Path(sys.executable).with_name("moto_server")
        found = str(binary) if binary.exists() else shutil.which("moto_server")
        if found is None:
            pytest.fail("moto_server is not installed: run `pip install 'moto[server]'` (it is in the dev extra)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # the server logs every request: to a file, since an unread pipe fills and stalls it
        self._log = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [found, "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=self._log
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                pytest.fail(f"moto_server exited at start (port {self.port}): {err[-500:]}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)  # polling a child process that is starting, not test synchronisation
        self.stop()
        pytest.fail(f"moto_server did not answer on {self.url} within {_START_TIMEOUT}s")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._log.close()


_shared: MotoServer | None = None


def shared_moto_server() -> str:
    """The session's moto_server endpoint, started on first call."""
    global _shared
    if _shared is None:
        _shared = MotoServer()
        atexit.register(_shared.stop)
    return _shared.url


@pytest.fixture(scope="session")
def moto_server() -> str:
    """The endpoint URL of a running moto_server (http://127.0.0.1:PORT)."""
    return shared_moto_server()


@contextlib.contextmanager
def dummy_aws_credentials() -> Iterator[None]:
    """Credentials moto accepts, set in the environment for the block, restored after."""
    saved = {k: os.environ.get(k) for k in _CREDENTIALS}
    os.environ.update(_CREDENTIALS)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def delete_prefixed(endpoint: str | None, prefix: str) -> None:
    """Delete every SNS topic, subscription and SQS queue whose name starts with `prefix`."""
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=endpoint)
    sns = boto3.client("sns", region_name=REGION, endpoint_url=endpoint)
    for page in sns.get_paginator("list_topics").paginate():
        for topic in page.get("Topics", []):
            arn = topic["TopicArn"]
            if arn.rsplit(":", 1)[-1].startswith(prefix):
                for sub_page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=arn):
                    for sub in sub_page.get("Subscriptions", []):
                        sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
                sns.delete_topic(TopicArn=arn)
    for page in sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix):
        for url in page.get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)
