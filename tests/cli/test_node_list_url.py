"""The multi-host broker URL the README documents for a RabbitMQ cluster
(`amqp://user:pass@node1:5672,node2:5672/vhost`), given to every command that takes
`--broker`. Its first node has nothing listening, so each command only works by moving
on to the next node: the suite's RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mailbag.broker import Message, connect
from mailbag.cli import main
from tests.conformance.env import eventually
from tests.names import run_name
from tests.observability import obs_app
from tests.rabbitmq.service import amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]


def node_list_url() -> str:
    return amqp_url().replace("127.0.0.1:5672", "127.0.0.1:1,127.0.0.1:5672")


def mailbag(*args: str, run: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MAILBAG_TEST_RUN": run},
        cwd=ROOT,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_broker_command_takes_a_node_list_url():
    run = run_name("cli")
    topic = obs_app.topic(run)
    url = node_list_url()
    broker = await connect(amqp_url())
    try:
        # topology apply declares the app's queue, publish sends to it, queues counts it,
        # dlq ls lists its (empty) dead-letter queue
        steps = [
            (("topology", "apply", "tests.observability.obs_app:app", "--broker", url), "declared"),
            (("publish", topic, '{"n": 1}', "--broker", url), ""),
            (("queues", "--queue", topic, "--json", "--broker", url), '"ready": 1'),
            (("dlq", "ls", topic, "--broker", url), ""),
        ]
        for args, says in steps:
            result = await asyncio.to_thread(mailbag, *args, run=run)
            assert result.returncode == 0, (args[0], result.stderr)
            assert says in result.stdout, (args[0], result.stdout)
            assert "does not parse" not in result.stderr
        # (what the commands declared, on the suite's broker)
        assert (await broker.stats(topic)).ready == 1
    finally:
        await broker.declare(obs_app.build(run).topology)  # so `remove_declared` knows the names
        await remove_declared(broker)
        await broker.close()


async def test_a_worker_on_a_node_list_url_becomes_ready_and_handles(tmp_path):
    run = run_name("cliw")
    port = free_port()
    broker = await connect(amqp_url())
    log_file = (tmp_path / "worker.log").open("w+")
    try:
        await broker.declare(obs_app.build(run).topology)
        # Given `mailbag worker` on the node list URL, serving its health on a port
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "mailbag.cli", "worker", "tests.observability.obs_app:app"),
                *("--broker", node_list_url(), "--metrics-port", str(port), "--metrics-host", "127.0.0.1"),
            ],
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "MAILBAG_TEST_RUN": run,
                "MAILBAG_IDEMPOTENCY_URL": "memory://",
            },
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            # Then it becomes ready, and drains what is published to its queue
            async def healthy() -> bool:
                return await asyncio.to_thread(main, ["health", "--port", str(port)]) == 0

            await eventually(healthy, timeout=30, what="`mailbag health` exit 0")
            topic = obs_app.topic(run)
            await broker.publish(topic, [Message(topic, b'{"n": 1}')])

            async def drained() -> bool:
                return (await broker.stats(topic)).ready == 0

            await eventually(drained, timeout=30, what="the worker to handle the message")
        finally:
            worker.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 30)
        log_file.seek(0)
        assert code == 0, log_file.read()
    finally:
        log_file.close()
        await remove_declared(broker)
        await broker.close()
