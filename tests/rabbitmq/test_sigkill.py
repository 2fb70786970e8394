"""A worker process killed with SIGKILL while it holds unacked messages: a second
worker receives them."""

import asyncio
import os
import signal
import sys

from mailbag.broker import Message
from mailbag.workers import Context, Worker
from mailbag.workers.stores.memory import MemoryStore
from tests.rabbitmq.holding_worker import make_app

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def test_messages_held_by_a_killed_worker_go_to_the_next_worker(broker, url, names):
    topic, queue = names("orders"), names("q")
    received: dict[str, int] = {}
    all_back = asyncio.Event()

    async def handle(payload, ctx: Context) -> None:
        received[ctx.message_id] = ctx.attempt
        if len(received) == 5:
            all_back.set()

    app = make_app(topic, queue, handle)
    await broker.declare(app.topology)
    sent = [Message(topic, b'{"n": %d}' % i) for i in range(5)]
    await broker.publish(topic, sent)

    # Given a worker process holding three messages unacked
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.rabbitmq.holding_worker",
        url,
        topic,
        queue,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        held = set()
        while len(held) < 3:
            line = await asyncio.wait_for(process.stdout.readline(), 30)
            assert line, "the worker process exited before holding three messages"
            held.add(line.decode().split()[1])
    finally:
        # When it is killed without a chance to clean up
        process.send_signal(signal.SIGKILL)
        await process.wait()

    # Then a second worker receives all five, the three held ones as a second attempt
    async with Worker(app, broker, store=MemoryStore()):
        await asyncio.wait_for(all_back.wait(), 30)
    assert set(received) == {m.id for m in sent}
    assert all(received[i] == 2 for i in held)
