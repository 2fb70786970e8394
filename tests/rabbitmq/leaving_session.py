"""A pytest session run by `test_shared_vhost.py` as a child process: its one test
declares queues and exchanges and leaves them behind, as a test that stops half way
does, and writes their names to `$MAILBAG_TEST_LEFT` for the parent to check. It then
waits for `$MAILBAG_TEST_GO` to appear, so the parent can declare names of its own
while this session runs. Not collected by the suite (the file name does not start
with `test_`)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aio_pika

from tests.names import run_name
from tests.rabbitmq.service import amqp_url


async def test_declare_and_leave_behind():
    stem = run_name("left")
    queues = [f"{stem}-q{i}" for i in range(5)]
    exchanges = [f"{stem}-x{i}" for i in range(2)]
    async with await aio_pika.connect(amqp_url()) as connection:
        channel = await connection.channel()
        for name in queues:
            await channel.declare_queue(name, durable=True)
        for name in exchanges:
            await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, durable=True)
    left = os.environ["MAILBAG_TEST_LEFT"]
    with open(f"{left}.tmp", "w") as out:
        json.dump({"queues": queues, "exchanges": exchanges}, out)
    os.replace(f"{left}.tmp", left)  # the parent sees the whole list or none
    go = os.environ["MAILBAG_TEST_GO"]
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        assert time.monotonic() < deadline, "the parent test never said go"
        await asyncio.sleep(0.05)
