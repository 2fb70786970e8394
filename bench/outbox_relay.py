"""Outbox relay throughput on SQLite and PostgreSQL, next to direct publishing, in the
same run on the same RabbitMQ.

    .venv/bin/python bench/outbox_relay.py [--url AMQP_URL] [--pg DSN] [--rows N] [--batch B]

Four ways to get N events of about 200 bytes onto one topic (one queue subscribed),
`--batch` per confirmed publish:
  raw      a raw aio-pika loop publishing with confirms (the baseline); with
           `--url memory://`, bare `Broker.publish` calls instead;
  direct   `Publisher.send` (retry, breaker and dedup bookkeeping included);
  sqlite   `Relay.drain` over N committed rows in a SQLite outbox: read, publish, mark sent;
  postgres the same over a PostgreSQL outbox (claims with FOR UPDATE SKIP LOCKED).
Prints each rate in events/s and its ratio to raw.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg

from mailbag.broker import Message, Queue, RetryPolicy, Topology, connect, mask_url
from mailbag.publishers import Publisher
from mailbag.publishers.outbox import PostgresOutbox, Relay, RelaySettings, SqliteOutbox

BODY = b'{"order_id": "%d", "padding": "' + b"x" * 160 + b'"}'


async def raw(url: str, broker, topic: str, rows: int, batch: int) -> float:
    if url.startswith("memory:"):
        return await bare(broker, topic, rows, batch)
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topic)
        started = time.perf_counter()
        for start in range(0, rows, batch):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            BODY % i,
                            message_id=uuid.uuid4().hex,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key="",
                    )
                    for i in range(start, min(rows, start + batch))
                )
            )
        return rows / (time.perf_counter() - started)


async def bare(broker, topic: str, rows: int, batch: int) -> float:
    messages = [Message(topic, BODY % i) for i in range(rows)]
    started = time.perf_counter()
    for start in range(0, rows, batch):
        await broker.publish(topic, messages[start : start + batch])
    return rows / (time.perf_counter() - started)


async def direct(publisher: Publisher, topic: str, rows: int, batch: int) -> float:
    messages = [Message(topic, BODY % i) for i in range(rows)]
    started = time.perf_counter()
    for start in range(0, rows, batch):
        await publisher.send(messages[start : start + batch])
    return rows / (time.perf_counter() - started)


async def sqlite_relay(publisher: Publisher, topic: str, rows: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        outbox = SqliteOutbox(str(path))
        conn = sqlite3.connect(path)
        outbox.create_table(conn)
        with conn:
            for i in range(rows):
                outbox.add(conn, topic, BODY % i, key=f"k{i % 50}")
        conn.close()
        async with outbox:
            return await _drain(Relay(outbox, publisher, RelaySettings(batch_size=batch)), rows)


async def postgres_relay(dsn: str, publisher: Publisher, topic: str, rows: int, batch: int) -> float:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        outbox = PostgresOutbox(dsn, table=f"{schema}.outbox")
        await outbox.create_table(conn)
        async with conn.transaction():
            for i in range(rows):
                await outbox.add(conn, topic, BODY % i, key=f"k{i % 50}")
        async with outbox:
            return await _drain(Relay(outbox, publisher, RelaySettings(batch_size=batch)), rows)
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def _drain(relay: Relay, rows: int) -> float:
    started = time.perf_counter()
    sent = await relay.drain()
    elapsed = time.perf_counter() - started
    assert sent == rows, f"relay sent {sent} of {rows}"
    return rows / elapsed


async def _delete(url: str, topic: str, queue: Queue) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in (queue.name, queue.dead_letter_queue):
            await channel.queue_delete(name)
        await channel.exchange_delete(topic)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--rows", type=int, default=5000)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()

    run = uuid.uuid4().hex[:8]
    topic = f"bench-{run}-orders"
    # one attempt: no TTL retry queues to clean up after
    queue = Queue(f"bench-{run}-sink", (topic,), retry=RetryPolicy(max_attempts=1))
    async with await connect(args.url) as broker:
        await broker.declare(Topology(queues=(queue,)))
        publisher = Publisher(broker)
        try:
            rates = {
                "raw": await raw(args.url, broker, topic, args.rows, args.batch),
                "direct": await direct(publisher, topic, args.rows, args.batch),
                "sqlite": await sqlite_relay(publisher, topic, args.rows, args.batch),
                "postgres": await postgres_relay(args.pg, publisher, topic, args.rows, args.batch),
            }
        finally:
            if not args.url.startswith("memory:"):
                await _delete(args.url, topic, queue)
    print(f"broker={mask_url(args.url)} rows={args.rows} batch={args.batch}")
    for name, rate in rates.items():
        print(f"{name:9s} {rate:8.0f} events/s  ratio_to_raw={rate / rates['raw']:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
