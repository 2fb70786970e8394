"""RabbitMQ throughput: mailbag against a raw aio-pika loop doing the same work, in the
same run, on the same broker.

    python bench/rabbitmq_throughput.py [--url amqp://guest:guest@127.0.0.1:5672/] [--count 20000]

(a) drain: a queue pre-filled with `count` persistent messages of about 200 bytes is
    drained with prefetch 100 by a no-op typed handler under the Worker, and by a raw
    loop that JSON-decodes and acks;
(b) end to end: `count` messages are published with confirms and consumed by the same
    two consumers; the clock runs from the first publish to the last ack.

Each figure is the median of `--rounds` rounds; every other round runs mailbag first.
Prints `drain_ratio=<mailbag/raw>` and,
last, `e2e_ratio=<mailbag/raw>`. The worker runs with no middleware of the app's own and
the handler opts out of idempotency: the raw loop records nothing either.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import aio_pika
from pydantic import BaseModel

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import App, Worker
from mailbag.workers.stores.memory import MemoryStore

PREFETCH = 100


class Order(BaseModel):
    order_id: str
    amount: int
    note: str


def body(i: int) -> bytes:
    return json.dumps({"order_id": f"order-{i:08d}", "amount": i, "note": "x" * 150}).encode()


async def raw_publish(channel: aio_pika.abc.AbstractChannel, exchange: str, count: int) -> None:
    target = await channel.get_exchange(exchange) if exchange else channel.default_exchange
    await asyncio.gather(
        *(
            target.publish(
                aio_pika.Message(
                    body(i), delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                ),
                routing_key="",
            )
            for i in range(count)
        )
    )


async def raw_consume(
    channel: aio_pika.abc.AbstractChannel, queue: str, count: int, subscribed: asyncio.Event | None = None
) -> None:
    """aio-pika's leanest consuming path: a callback per message that decodes and acks."""
    await channel.set_qos(prefetch_count=PREFETCH)
    source = await channel.get_queue(queue)
    seen = 0
    done = asyncio.Event()

    async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen
        json.loads(m.body)
        await m.ack()
        seen += 1
        if seen == count:
            done.set()

    tag = await source.consume(on_message)
    if subscribed is not None:
        subscribed.set()
    await done.wait()
    await source.cancel(tag)


def mailbag_app(topic: str, queue: str, count: int, done: asyncio.Event) -> App:
    app = App("bench")
    seen = 0

    @app.handler(topic, queue=queue, model=Order, idempotency=False)
    async def handle(order: Order) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    return app


class Bench:
    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.count = count

    async def __aenter__(self) -> Bench:
        self.connection = await aio_pika.connect(self.url)
        self.broker = await open_broker(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.close()
        await self.connection.close()

    def worker(self, topic: str, queue: str, done: asyncio.Event) -> Worker:
        return Worker(
            mailbag_app(topic, queue, self.count, done),
            self.broker,
            concurrency=PREFETCH,
            prefetch=PREFETCH,
            middleware=[],
            store=MemoryStore(),
        )

    async def fresh(self) -> tuple[str, str]:
        """A new topic and queue of its own for one measurement."""
        run = uuid.uuid4().hex[:8]
        topic, queue = f"bench-{run}", f"bench-{run}.q"
        await self.broker.declare(Topology(queues=(Queue(queue, (topic,)),)))
        return topic, queue

    async def drop(self, topic: str, queue: str) -> None:
        async with self.connection.channel() as channel:
            for name in (queue, f"{queue}.dlq"):
                await channel.queue_delete(name)
            await channel.exchange_delete(topic)

    async def filled(self) -> tuple[str, str]:
        topic, queue = await self.fresh()
        async with self.connection.channel() as channel:
            await raw_publish(channel, topic, self.count)
        return topic, queue

    async def raw_drain(self) -> float:
        topic, queue = await self.filled()
        started = time.perf_counter()  # like the worker's, the clock includes opening the consumer
        async with self.connection.channel() as channel:
            await raw_consume(channel, queue, self.count)
            took = time.perf_counter() - started
        await self.drop(topic, queue)
        return self.count / took

    async def mailbag_drain(self) -> float:
        topic, queue = await self.filled()
        done = asyncio.Event()
        worker = self.worker(topic, queue, done)
        started = time.perf_counter()
        async with worker:
            await done.wait()
            took = time.perf_counter() - started
        await self.drop(topic, queue)
        return self.count / took

    async def raw_e2e(self) -> float:
        topic, queue = await self.fresh()
        async with self.connection.channel() as consuming, self.connection.channel() as publishing:
            subscribed = asyncio.Event()
            consumer = asyncio.create_task(raw_consume(consuming, queue, self.count, subscribed))
            await subscribed.wait()  # the worker, too, is consuming before the clock starts
            started = time.perf_counter()
            await raw_publish(publishing, topic, self.count)
            await consumer
            took = time.perf_counter() - started
        await self.drop(topic, queue)
        return self.count / took

    async def mailbag_e2e(self) -> float:
        topic, queue = await self.fresh()
        done = asyncio.Event()
        worker = self.worker(topic, queue, done)
        async with worker:
            started = time.perf_counter()
            await self.broker.publish(topic, [Message(topic, body(i), type="Order") for i in range(self.count)])
            await done.wait()
            took = time.perf_counter() - started
        await self.drop(topic, queue)
        return self.count / took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"raw_drain": [], "mailbag_drain": [], "raw_e2e": [], "mailbag_e2e": []}
    async with Bench(args.url, args.count) as bench:
        for round_ in range(args.rounds):
            # every other round runs mailbag first, so neither side always follows the other
            order = list(rates) if round_ % 2 == 0 else ["mailbag_drain", "raw_drain", "mailbag_e2e", "raw_e2e"]
            for name in order:
                rate = await getattr(bench, name)()
                rates[name].append(rate)
                print(f"{name}: {rate:,.0f} msg/s", flush=True)
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"median {name}: {value:,.0f} msg/s")
    print(f"drain_ratio={median['mailbag_drain'] / median['raw_drain']:.3f}")
    print(f"e2e_ratio={median['mailbag_e2e'] / median['raw_e2e']:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
