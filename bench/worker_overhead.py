"""Worker overhead on the memory broker, measured against a raw baseline in the same run.

1. Throughput: the full default middleware chain (correlation, idempotency on the
   memory store, retry, breaker, timeout) through `Worker`, over a bare loop that
   consumes, decodes, calls the same handler and acks. Target ratio >= 0.5.
2. Memory: RSS growth while a worker drains 100,000 queued messages (the backlog is
   queued before the first reading). Target < 50 MB.

    .venv/bin/python bench/worker_overhead.py [--messages 20000] [--backlog 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

from mailbag.broker import Message
from mailbag.broker.codec import decode
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Worker, WorkerSettings

TOPIC = "bench.orders"
QUEUE = "bench.orders.q"
BODY = b'{"order_id": "o-1", "amount_cents": 1250}'


def rss_mb() -> float:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_app(done: asyncio.Event, expected: int) -> tuple[App, list[int]]:
    app = App("bench")
    count = [0]

    @app.handler(TOPIC, queue=QUEUE)
    async def handle(payload: dict) -> None:
        count[0] += 1
        if count[0] == expected:
            done.set()

    return app, count


async def fill(broker: MemoryBroker, n: int) -> None:
    for start in range(0, n, 1000):
        await broker.publish(TOPIC, [Message(TOPIC, BODY) for _ in range(min(1000, n - start))])


async def bare_loop(n: int, prefetch: int) -> float:
    """Messages per second: consume, decode, call, ack; nothing else."""
    broker = MemoryBroker()
    done = asyncio.Event()
    app, _ = build_app(done, n)
    handler = app.handler_for(QUEUE, TOPIC)
    await broker.declare(app.topology)
    await fill(broker, n)
    started = time.perf_counter()
    async with broker.consume(QUEUE, prefetch=prefetch) as consumer:
        async for delivery in consumer:
            await handler.func(decode(delivery.message.body, delivery.message.content_type))
            await delivery.ack()
            if done.is_set():
                break
    elapsed = time.perf_counter() - started
    await broker.close()
    return n / elapsed


async def full_chain(n: int, concurrency: int) -> float:
    """Messages per second through `Worker` with the default chain."""
    broker = MemoryBroker()
    done = asyncio.Event()
    app, _ = build_app(done, n)
    await broker.declare(app.topology)
    await fill(broker, n)
    started = time.perf_counter()
    async with Worker(app, broker, settings=WorkerSettings(concurrency=concurrency)):
        await done.wait()
    elapsed = time.perf_counter() - started
    await broker.close()
    return n / elapsed


async def drain_backlog(n: int, concurrency: int) -> tuple[float, float, float]:
    """(RSS before draining, peak while draining, after) in MB."""
    broker = MemoryBroker()
    done = asyncio.Event()
    app, _ = build_app(done, n)
    await broker.declare(app.topology)
    await fill(broker, n)
    gc.collect()
    before = peak = rss_mb()
    async with Worker(app, broker, settings=WorkerSettings(concurrency=concurrency)):
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), 0.05)
            except TimeoutError:
                pass
            peak = max(peak, rss_mb())
    gc.collect()
    after = rss_mb()
    await broker.close()
    return before, max(peak, after), after


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    bare, chained = [], []
    for _ in range(args.rounds):  # interleaved, best of each, so drift hits both alike
        bare.append(await bare_loop(args.messages, args.concurrency))
        chained.append(await full_chain(args.messages, args.concurrency))
    ratio = max(chained) / max(bare)
    print(f"throughput, {args.messages} messages, concurrency {args.concurrency}, best of {args.rounds}:")
    print(f"  bare handler loop   {max(bare):10.0f} msg/s")
    print(f"  full default chain  {max(chained):10.0f} msg/s")
    print(f"  ratio               {ratio:10.2f}   (target >= 0.5) {'ok' if ratio >= 0.5 else 'MISSED'}")
    before, peak, after = await drain_backlog(args.backlog, args.concurrency)
    growth = peak - before
    print(f"memory, draining {args.backlog} queued messages:")
    print(f"  RSS before {before:.1f} MB, peak {peak:.1f} MB, after {after:.1f} MB")
    print(f"  growth     {growth:.1f} MB   (target < 50 MB) {'ok' if growth < 50 else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
