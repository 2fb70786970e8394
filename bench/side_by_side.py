"""mailbag side by side with raw aio-pika and FastStream on the local RabbitMQ, in one run.

    python bench/side_by_side.py [--url amqp://guest:guest@127.0.0.1:5672/] [--count 10000] [--rounds 3]

Drain: each consumer gets a queue of its own, pre-filled with `count` persistent JSON
messages of about 200 bytes, and drains it with prefetch 100 through a typed handler
(pydantic) that does nothing:

- `raw`: aio-pika's consume callback: decode, validate, ack;
- `faststream`: a FastStream typed subscriber (needs the `bench` extra);
- `bare`: a mailbag `Worker` with no middleware and idempotency off;
- `default`: a mailbag `Worker` with its default chain and default store (durable
  SQLite idempotency records), concurrency 100;
- `cli`: `mailbag worker` with every default (a process of its own, as users run it).

The rate is the count over the time from the first handler call to the last one (the
same clock for every consumer, and no process start-up in it). Publishing: `count`
confirmed publishes, all in flight at once, by raw aio-pika, FastStream and mailbag's
`Publisher.publish_many`. Latency: messages published one by one at a steady
`--rate` (200/s) and handled by raw aio-pika and by the mailbag `Worker` with its
defaults; p50/p99 from publish to handler.

Each figure is the median of `--rounds` rounds; every other round runs the consumers in
the opposite order. Prints every figure, then `<name>_ratio=<value>` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

from mailbag.broker.rabbitmq import open_broker
from mailbag.publishers import Publisher, PublisherSettings
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.memory import MemoryStore

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from apps import Order, read_reports  # noqa: E402 - the apps module sits beside this script
from rabbitmq_throughput import Bench as ThroughputBench  # noqa: E402
from rabbitmq_throughput import body, raw_publish  # noqa: E402

PREFETCH = 100

#: name -> (what the ratio compares, target, higher is better)
TARGETS = {
    "default_drain": (0.7, True),
    "bare_drain": (0.95, True),
    "cli_drain": (0.5, True),
    "faststream_drain": (None, True),
    "publish": (0.9, True),
    "faststream_publish": (None, True),
    "latency_p99": (2.0, False),
}


class Clock:
    """First and last handler call of one drain."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.first = self.last = 0.0
        self.done = asyncio.Event()

    def tick(self) -> None:
        now = time.perf_counter()
        if not self.seen:
            self.first = now
        self.seen += 1
        self.last = now
        if self.seen == self.count:
            self.done.set()

    @property
    def rate(self) -> float:
        return self.count / (self.last - self.first)


class Bench(ThroughputBench):
    """The throughput bench's connections and queues (`fresh`, `filled`, `drop`), with
    the side-by-side measurements."""

    def __init__(self, url: str, count: int, rate: float, latency_count: int) -> None:
        super().__init__(url, count)
        self.rate = rate
        self.latency_count = latency_count

    async def drained(self, consume: Callable[[str, str], Awaitable[float]]) -> float:
        topic, queue = await self.filled()
        try:
            return await consume(topic, queue)
        finally:
            await self.drop(topic, queue)

    # -- drains -----------------------------------------------------------------

    async def raw_drain(self) -> float:
        async def consume(topic: str, queue: str) -> float:
            clock = Clock(self.count)
            await self._raw_consume(queue, lambda m: clock.tick(), clock.done)
            return clock.rate

        return await self.drained(consume)

    async def _raw_consume(
        self,
        queue: str,
        seen: Callable[[aio_pika.abc.AbstractIncomingMessage], None],
        done: asyncio.Event,
        *,
        then: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """aio-pika's consume callback: decode, validate, ack, then `seen(message)`;
        runs `then()` (if given) while consuming, and stops once `done` is set."""
        async with self.connection.channel() as channel:
            await channel.set_qos(prefetch_count=PREFETCH)
            source = await channel.get_queue(queue)

            async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
                Order.model_validate_json(m.body)
                await m.ack()
                seen(m)

            tag = await source.consume(on_message)
            if then is not None:
                await then()
            await done.wait()
            await source.cancel(tag)

    async def faststream_drain(self) -> float:
        from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

        async def consume(topic: str, queue: str) -> float:
            clock = Clock(self.count)
            broker = RabbitBroker(self.url, logger=None)

            @broker.subscriber(RabbitQueue(queue, declare=False), channel=Channel(prefetch_count=PREFETCH))
            async def handle(order: Order) -> None:
                clock.tick()

            await broker.start()
            try:
                await clock.done.wait()
            finally:
                await broker.stop()
            return clock.rate

        return await self.drained(consume)

    async def bare_drain(self) -> float:
        return await self.drained(lambda topic, queue: self._worker_drain(topic, queue, bare=True))

    async def default_drain(self) -> float:
        return await self.drained(lambda topic, queue: self._worker_drain(topic, queue, bare=False))

    async def _worker_drain(self, topic: str, queue: str, *, bare: bool) -> float:
        clock = Clock(self.count)
        app = App("bench")

        @app.handler(topic, queue=queue, model=Order, idempotency=not bare)
        async def handle(order: Order) -> None:
            clock.tick()

        options = {"middleware": [], "store": MemoryStore()} if bare else {}
        async with Worker(app, self.broker, concurrency=PREFETCH, prefetch=PREFETCH, **options):
            await clock.done.wait()
        return clock.rate

    async def cli_drain(self) -> float:
        async def consume(topic: str, queue: str) -> float:
            return await run_cli_worker(self.url, topic, queue, self.count)

        return await self.drained(consume)

    # -- publishing -------------------------------------------------------------

    async def raw_publish(self) -> float:
        topic, queue = await self.fresh()
        try:
            async with self.connection.channel() as channel:
                started = time.perf_counter()
                await raw_publish(channel, topic, self.count)
                return self.count / (time.perf_counter() - started)
        finally:
            await self.drop(topic, queue)

    async def faststream_publish(self) -> float:
        from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

        topic, queue = await self.fresh()
        broker = RabbitBroker(self.url, logger=None)
        await broker.start()
        exchange = RabbitExchange(topic, type=ExchangeType.FANOUT, declare=False)
        orders = [Order.model_validate_json(body(i)) for i in range(self.count)]
        try:
            started = time.perf_counter()
            await asyncio.gather(*(broker.publish(order, exchange=exchange, persist=True) for order in orders))
            return self.count / (time.perf_counter() - started)
        finally:
            await broker.stop()
            await self.drop(topic, queue)

    async def mailbag_publish(self) -> float:
        """On a connection of its own, as the raw and FastStream publishers have. The
        default 5 s for one try's confirms is too short for 10,000 messages on a busy
        machine (the try would be cut short and sent again): the bench allows 60 s."""
        topic, queue = await self.fresh()
        orders = [Order.model_validate_json(body(i)) for i in range(self.count)]
        try:
            async with await open_broker(self.url) as broker:
                publisher = Publisher(broker, settings=PublisherSettings(deadline=120, attempt_timeout=60))
                started = time.perf_counter()
                await publisher.publish_many(topic, orders)
                return self.count / (time.perf_counter() - started)
        finally:
            await self.drop(topic, queue)

    # -- latency ----------------------------------------------------------------

    async def raw_latency(self) -> list[float]:
        topic, queue = await self.fresh()
        latencies: list[float] = []
        done = asyncio.Event()

        def seen(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            latencies.append(time.time() - float(m.headers["sent"]))  # type: ignore[arg-type]
            if len(latencies) == self.latency_count:
                done.set()

        try:
            await self._raw_consume(queue, seen, done, then=lambda: self._steady(topic, done))
        finally:
            await self.drop(topic, queue)
        return latencies

    async def mailbag_latency(self) -> list[float]:
        topic, queue = await self.fresh()
        latencies: list[float] = []
        done = asyncio.Event()
        app = App("bench")

        @app.handler(topic, queue=queue, model=Order)
        async def handle(order: Order, ctx: Context) -> None:
            latencies.append(time.time() - float(ctx.delivery.message.headers["sent"]))
            if len(latencies) == self.latency_count:
                done.set()

        try:
            async with Worker(app, self.broker):
                await self._steady(topic, done)
        finally:
            await self.drop(topic, queue)
        return latencies

    async def _steady(self, topic: str, done: asyncio.Event) -> None:
        """Publish `latency_count` messages at `rate` per second, each stamped with its
        send time, then wait until all were handled."""
        async with self.connection.channel() as channel:
            exchange = await channel.get_exchange(topic)
            loop = asyncio.get_running_loop()
            start = loop.time()
            sends = []
            for i in range(self.latency_count):
                await asyncio.sleep(max(0.0, start + i / self.rate - loop.time()))
                message = aio_pika.Message(
                    body(i),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type="application/json",
                    headers={"sent": repr(time.time())},
                )
                sends.append(asyncio.ensure_future(exchange.publish(message, routing_key="")))
            await asyncio.gather(*sends)
            await asyncio.wait_for(done.wait(), 60)


async def run_cli_worker(url: str, topic: str, queue: str, count: int, *args: str) -> float:
    """Drain `queue` with `mailbag worker apps:drain` (its defaults, plus `args`) in a
    process of its own; the rate comes from the handlers' own reports."""
    env = {"BENCH_TOPIC": topic, "BENCH_QUEUE": queue, "MAILBAG_BROKER_URL": url, "MAILBAG_LOG_LEVEL": "WARNING"}
    return await drain_with([sys.executable, "-m", "mailbag.cli", "worker", "apps:drain", *args], env, count)


async def drain_with(command: list[str], env: dict[str, str], count: int) -> float:
    """Run `command` (with `env` and `BENCH_REPORT` on top of ours, in a scratch folder)
    until its handlers reported `count` messages, then SIGTERM it; the drain rate."""
    with tempfile.TemporaryDirectory() as scratch:
        reports = Path(scratch) / "reports"
        reports.mkdir()
        path = os.pathsep.join(filter(None, (str(BENCH), os.environ.get("PYTHONPATH"))))
        full = {**os.environ, "PYTHONPATH": path, "BENCH_REPORT": str(reports), **env}
        process = await asyncio.create_subprocess_exec(*command, cwd=scratch, env=full)
        try:
            deadline = time.monotonic() + 600
            while (handled := read_reports(reports))[0] < count:
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{command[2:4]} stopped after {handled[0]} of {count} messages")
                await asyncio.sleep(0.02)  # polling the handlers' reports, not a synchronisation
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            await process.wait()
        _, first, last = handled
        return count / (last - first)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second for the latency figures")
    parser.add_argument("--latency-count", type=int, default=1000)
    args = parser.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="mailbag-bench-"))  # the default SQLite store goes here
    drains = ["raw_drain", "faststream_drain", "bare_drain", "default_drain", "cli_drain"]
    publishes = ["raw_publish", "faststream_publish", "mailbag_publish"]
    rates: dict[str, list[float]] = {name: [] for name in drains + publishes}
    latency: dict[str, list[float]] = {"raw": [], "mailbag": []}
    async with Bench(args.url, args.count, args.rate, args.latency_count) as bench:
        for round_ in range(args.rounds):
            forward = round_ % 2 == 0
            for name in (drains + publishes) if forward else (drains[::-1] + publishes[::-1]):
                rate = await getattr(bench, name)()
                rates[name].append(rate)
                print(f"round {round_ + 1} {name}: {rate:,.0f} msg/s", flush=True)
            for name in ("raw", "mailbag") if forward else ("mailbag", "raw"):
                values = await getattr(bench, f"{name}_latency")()
                latency[name] += values
                print(
                    f"round {round_ + 1} {name}_latency: p50 {percentile(values, 50) * 1000:.2f} ms"
                    f" p99 {percentile(values, 99) * 1000:.2f} ms",
                    flush=True,
                )
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"median {name}: {value:,.0f} msg/s")
    p = {f"{name}_{q}": percentile(values, q) * 1000 for name, values in latency.items() for q in (50, 99)}
    for name, value in p.items():
        print(f"latency {name}: {value:.2f} ms (all rounds)")
    ratios = {
        "default_drain": median["default_drain"] / median["raw_drain"],
        "bare_drain": median["bare_drain"] / median["raw_drain"],
        "cli_drain": median["cli_drain"] / median["raw_drain"],
        "faststream_drain": median["faststream_drain"] / median["raw_drain"],
        "publish": median["mailbag_publish"] / median["raw_publish"],
        "faststream_publish": median["faststream_publish"] / median["raw_publish"],
        "latency_p99": p["mailbag_99"] / p["raw_99"],
    }
    for name, value in ratios.items():
        target, higher = TARGETS[name]
        if target is not None:
            met = value >= target if higher else value <= target
            print(f"target {name}: {'>=' if higher else '<='} {target}, {'met' if met else 'MISSED'}")
    for name, value in ratios.items():
        print(f"{name}_ratio={value:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
