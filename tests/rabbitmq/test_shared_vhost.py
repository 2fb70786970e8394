"""Two pytest sessions share the test vhost: each one's cleanup deletes only the names
it declared (its run prefix), never the other's."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import aio_pika
import aiormq

from tests.conformance.env import eventually
from tests.rabbitmq.service import amqp_url

ROOT = Path(__file__).resolve().parents[2]


async def _exists(channel_of: aio_pika.abc.AbstractConnection, kind: str, name: str) -> bool:
    channel = await channel_of.channel()
    try:
        if kind == "queue":
            await channel.declare_queue(name, passive=True)
        else:
            await channel.declare_exchange(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


async def test_a_session_cleans_up_its_own_names_and_leaves_a_concurrent_sessions_alone(tmp_path):
    # Given a pytest session running beside this one on the same vhost, which has declared
    # names of its own and leaves them behind
    left_file, go = tmp_path / "left.json", tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/rabbitmq/leaving_session.py"],
        cwd=ROOT,
        env={**os.environ, "MAILBAG_TEST_LEFT": str(left_file), "MAILBAG_TEST_GO": str(go)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    other = f"mbt{secrets.token_hex(3)}-other"
    queues = [f"{other}-q{i}" for i in range(30)] + [f"{other}-q0.dlq", f"{other}-q0.retry.200ms"]
    exchanges = [f"{other}-topic{i}" for i in range(5)]
    async with await aio_pika.connect(amqp_url()) as connection:
        try:
            await eventually(
                lambda: asyncio.to_thread(left_file.exists), what="the child session to declare its names", timeout=60
            )
            # When a third party's queues and exchanges appear while that session runs, and it ends
            channel = await connection.channel()
            for name in queues:
                await channel.declare_queue(name, durable=True)
            for name in exchanges:
                await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
            go.touch()
            output, _ = await asyncio.to_thread(child.communicate, timeout=120)
            assert child.returncode == 0, output
            left = json.loads(left_file.read_text())
            # Then the session deleted what it left behind, and none of the names that appeared beside it
            assert left["queues"] and left["exchanges"]
            for name in left["queues"]:
                assert not await _exists(connection, "queue", name), name
            for name in left["exchanges"]:
                assert not await _exists(connection, "exchange", name), name
            for name in queues:
                assert await _exists(connection, "queue", name), f"queue {name} of the other session was deleted"
            for name in exchanges:
                assert await _exists(connection, "exchange", name), f"exchange {name} of the other session was deleted"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            channel = await connection.channel()
            for name in queues:
                await channel.queue_delete(name)
            for name in exchanges:
                await channel.exchange_delete(name)
