"""`mailbag worker --metrics-port` and `mailbag health`, run as an operator runs them:
a worker process on the real RabbitMQ, scraped and probed over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from mailbag.broker import Message
from mailbag.broker.rabbitmq import open_broker
from mailbag.cli import main
from tests.conformance.env import eventually
from tests.names import run_name
from tests.observability import obs_app, running_worker, stopped
from tests.observability.conftest import sample, scrape
from tests.rabbitmq.service import amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mailbag(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        cwd=ROOT,
    )


async def test_worker_serves_metrics_and_probes_and_health_follows_readiness(tmp_path):
    run = run_name("o")
    port = free_port()
    broker = await open_broker(amqp_url())
    log_file = (tmp_path / "worker.log").open("w+")
    try:
        await broker.declare(obs_app.build(run).topology)
        # Given a worker process with metrics on a port, logging JSON
        with running_worker(
            run,
            *("--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--log-format", "json"),
            stderr=log_file,
            MAILBAG_METRICS_INTERVAL="0.2",
        ) as proc:

            async def health_says(status: int) -> bool:
                return await asyncio.to_thread(main, ["health", "--port", str(port)]) == status

            await eventually(lambda: health_says(0), timeout=30, what="`mailbag health` exit 0")
            # When one message succeeds and one fails its first attempt
            topic = obs_app.topic(run)
            await broker.publish(topic, [Message(topic, b'{"n": 1}'), Message(topic, b'{"fail_first": true}')])
            labels = {"queue": topic, "handler": "build.<locals>.job"}

            async def handled_two() -> bool:
                return sample(await scrape(port), "mailbag_messages_handled_total", **labels) == 2

            await eventually(handled_two, timeout=30, what="two handled")
            # Then the scrape shows it, queue depth included
            samples = await scrape(port)
            assert sample(samples, "mailbag_messages_retried_total", **labels) == 1
            assert (("mailbag_queue_messages", (("queue", topic), ("state", "ready")))) in samples
            # When the worker is told to stop, it exits cleanly and health says not ready
            assert await stopped(proc) == 0
        down = mailbag("health", "--port", str(port))
        assert down.returncode == 1 and down.stderr.startswith("mailbag: not ready: cannot reach"), down.stderr
        assert len(down.stderr.strip().splitlines()) == 1
        # and every log line it wrote was JSON; the failure line says where and which attempt
        log_file.seek(0)
        records = [json.loads(line) for line in log_file.read().splitlines()]
        [failure] = [r for r in records if r.get("action") == "retry"]
        assert (failure["queue"], failure["attempt"], failure["correlation_id"]) == (topic, 1, failure["message_id"])
        assert any(r["message"].startswith("serving /metrics") for r in records)
    finally:
        log_file.close()
        await broker.close()
        await remove_declared(broker)


def test_a_taken_metrics_port_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = mailbag(
            "worker",
            "tests.observability.obs_app:app",
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            MAILBAG_TEST_RUN="taken",
        )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"mailbag: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"


def test_health_without_a_port_is_a_usage_error():
    result = mailbag("health", MAILBAG_METRICS_PORT="")
    assert result.returncode == 2
    assert result.stderr == "mailbag: error: give the worker's metrics port: --port N, or MAILBAG_METRICS_PORT\n"


def test_bad_metrics_settings_are_one_line():
    result = mailbag("worker", "tests.observability.obs_app:app", "--metrics-port", "70000", MAILBAG_TEST_RUN="bad")
    assert result.returncode == 2
    assert result.stderr == (
        "mailbag: error: bad worker setting metrics_port: Input should be less than or equal to 65535\n"
    )
