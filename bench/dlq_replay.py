"""Dead-letter replay speed on RabbitMQ, against a raw aio-pika shovel in the same run.

Both move N messages from a dead-letter queue back to their queue the safe way:
publish with confirms, then ack, in batches of 10. The raw side is the least a
hand-written aio-pika script does; the mailbag side is `DeadLetters.replay`, which
also parses each record and strips the death headers.

    .venv/bin/python bench/dlq_replay.py [--messages N] [--url AMQP_URL]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aio_pika

from mailbag.broker import Message, Queue, Topology, connect
from mailbag.broker import headers as h
from mailbag.dlq import DeadLetters

BATCH = 10


async def seed(broker, queue: Queue, n: int) -> None:
    stamp = h.dead_letter_stamp("bench.orders", queue.name, 3, "failed after 3 attempt(s)", ValueError("bench"))
    body = b'{"order": "%d", "padding": "' + b"x" * 160 + b'"}'
    messages = [Message("bench.orders", body % i, headers={"tenant": "acme", **stamp}) for i in range(n)]
    for start in range(0, n, 500):
        await broker.send(queue.dead_letter_queue, messages[start : start + 500])


async def raw_replay(url: str, queue: Queue, n: int) -> float:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=n + BATCH)
        source = await channel.get_queue(queue.dead_letter_queue, ensure=False)
        moved = 0
        pending: list[aio_pika.abc.AbstractIncomingMessage] = []
        started = time.perf_counter()
        async with source.iterator() as incoming:
            async for raw in incoming:
                pending.append(raw)
                if len(pending) == BATCH or moved + len(pending) == n:
                    await asyncio.gather(
                        *(
                            channel.default_exchange.publish(
                                aio_pika.Message(
                                    m.body,
                                    headers={k: v for k, v in (m.headers or {}).items() if not k.startswith(h.PREFIX)},
                                    message_id=m.message_id,
                                    content_type=m.content_type,
                                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                ),
                                routing_key=queue.name,
                            )
                            for m in pending
                        )
                    )
                    for m in pending:
                        await m.ack()
                    moved += len(pending)
                    pending.clear()
                    if moved == n:
                        break
        return time.perf_counter() - started


async def mailbag_replay(broker, queue: Queue) -> float:
    started = time.perf_counter()
    result = await DeadLetters(broker, queue.name).replay(all=True, batch=BATCH)
    elapsed = time.perf_counter() - started
    assert result.removed > 0
    return elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    n = args.messages
    async with await connect(args.url) as broker:
        raw_queue, our_queue = (
            Queue(f"bench-dlq-raw-{uuid.uuid4().hex[:6]}"),
            Queue(f"bench-dlq-ours-{uuid.uuid4().hex[:6]}"),
        )
        await broker.declare(Topology(queues=(raw_queue, our_queue)))
        try:
            await seed(broker, raw_queue, n)
            await seed(broker, our_queue, n)
            raw = await raw_replay(args.url, raw_queue, n)
            ours = await mailbag_replay(broker, our_queue)
            for q in (raw_queue, our_queue):
                stats = await broker.stats(q.name)
                assert (stats.ready, stats.dead_letters) == (n, 0), stats
        finally:
            await _delete(args.url, raw_queue, our_queue)
    print(f"dead-letter replay on RabbitMQ, {n} messages, batches of {BATCH}, publish-confirm then ack")
    print(f"  raw aio-pika : {n / raw:8.0f} msg/s")
    print(f"  mailbag      : {n / ours:8.0f} msg/s")
    print(f"  mailbag / raw: {raw / ours:8.2f}")


async def _delete(url: str, *queues: Queue) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for q in queues:
            for name in (q.name, q.dead_letter_queue):
                await channel.queue_delete(name)


if __name__ == "__main__":
    asyncio.run(main())
