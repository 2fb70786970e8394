"""The fault scenarios' workload and checker: a publisher sends numbered messages (each
under its own id) while a worker's transactional handler writes one ledger row per
message in the SQLite store's transaction. The checker classifies every message:
confirmed or not, handled or lost, applied once or twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from mailbag.broker import Broker, RetryPolicy
from mailbag.broker.rabbitmq import open_broker
from mailbag.publishers import Publisher, PublishError, PublisherSettings
from mailbag.workers import App, Context, Worker, WorkerSettings
from mailbag.workers.metrics import Metrics
from mailbag.workers.stores.sqlite import SqliteStore
from tests.conformance.env import eventually
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared


@dataclass
class Verdict:
    confirmed: list[int]
    unconfirmed: list[int]
    rows: list[int]
    lost: list[int] = field(init=False)
    twice: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.lost = sorted(set(self.confirmed) - set(self.rows))
        self.twice = sorted(n for n, times in Counter(self.rows).items() if times > 1)

    def __str__(self) -> str:
        handled = len(set(self.unconfirmed) & set(self.rows))
        return (
            f"published {len(self.confirmed) + len(self.unconfirmed)}, confirmed {len(self.confirmed)}, "
            f"unconfirmed {len(self.unconfirmed)} (of which handled {handled}); "
            f"lost {len(self.lost)}, applied twice {len(self.twice)}"
        )


class Workload:
    def __init__(self, stem: str, tmp_path: Path, kind: str = "classic") -> None:
        self.stem = stem
        self.topic = f"{stem}.orders"
        self.queue = f"{stem}.orders.q"
        self.app = App("faults")
        self.store = SqliteStore(tmp_path / "idem.sqlite3")
        self.confirmed: list[int] = []
        #: (began, returned) of each confirmed publish call, in loop time, in order
        self.confirmed_at: list[tuple[float, float]] = []
        self.unconfirmed: list[int] = []
        self._producing = asyncio.Event()
        retry = RetryPolicy(max_attempts=20, initial_delay=0.2)

        @self.app.handler(self.topic, queue=self.queue, kind=kind, transactional=True, retry=retry)
        async def book(payload: dict, ctx: Context) -> None:
            await ctx.transaction.execute("INSERT INTO ledger VALUES (?)", (payload["n"],))

    async def ledger(self) -> list[int]:
        async with self.store.connection() as conn:
            return [r[0] for r in await self.store.fetch(conn, "SELECT n FROM ledger")]

    async def handled(self) -> int:
        return len(set(await self.ledger()))

    async def progress(self, more: int, timeout: float, what: str) -> None:
        """Wait until `more` messages beyond those handled now are handled."""
        goal = await self.handled() + more

        async def reached() -> bool:
            return await self.handled() >= goal

        await eventually(reached, timeout=timeout, what=what)

    @asynccontextmanager
    async def running(self, worker_broker: Broker, publisher_broker: Broker) -> AsyncIterator[Callable[[], Verdict]]:
        """Run the worker and the publisher; on leaving, stop publishing, wait until every
        confirmed message is handled and hand back the verdict (through the yielded call)."""
        await self.store.setup()
        try:
            async with self.store.connection() as conn:
                await conn.execute("CREATE TABLE IF NOT EXISTS ledger (n INTEGER NOT NULL)")
            await worker_broker.declare(self.app.topology)
            publisher = Publisher(publisher_broker, settings=PublisherSettings(deadline=20, attempt_timeout=5))
            verdict: list[Verdict] = []
            self._producing.set()
            async with Worker(self.app, worker_broker, store=self.store, concurrency=8):
                producer = asyncio.create_task(self._produce(publisher))
                try:
                    yield lambda: verdict[0]
                finally:
                    self._producing.clear()
                    await producer

                async def all_confirmed_handled() -> bool:
                    return set(self.confirmed) <= set(await self.ledger())

                await eventually(all_confirmed_handled, timeout=90, what="every confirmed message to be handled")
            verdict.append(Verdict(self.confirmed, self.unconfirmed, await self.ledger()))
        finally:
            await self.store.close()  # an open store's thread would keep pytest from exiting

    def first_confirm_after(self, moment: float) -> float | None:
        """When the first publish begun after `moment` was confirmed, if one was yet."""
        return next((returned for began, returned in self.confirmed_at if began > moment), None)

    def longest_gap(self, since: float) -> float:
        """The longest time without a confirm, from `since` to the last confirm."""
        times = [since] + [returned for _, returned in self.confirmed_at if returned > since]
        return max((b - a for a, b in pairwise(times)), default=0.0)

    async def _produce(self, publisher: Publisher) -> None:
        n = 0
        loop = asyncio.get_running_loop()
        while self._producing.is_set():
            began = loop.time()
            try:
                await publisher.publish(self.topic, {"n": n}, message_id=f"{self.stem}-{n}")
                self.confirmed.append(n)
                self.confirmed_at.append((began, loop.time()))
            except PublishError:
                self.unconfirmed.append(n)
            n += 1
            await asyncio.sleep(0.02)  # the publishing rate: about 50 a second


@asynccontextmanager
async def proxied_worker(tag: str, metrics: Metrics) -> AsyncIterator[tuple[CuttingProxy, Worker]]:
    """A worker of one no-op handler, with `metrics`, on the real RabbitMQ through a
    `CuttingProxy` (the URL naming no heartbeat, the default reconnect interval), not
    started; its queue is removed afterwards over a direct connection."""
    amqp_url()  # fails the test, saying how to start RabbitMQ, when it is down
    stem = run_name(tag)
    app = App(tag)

    @app.handler(f"{stem}.jobs", queue=f"{stem}.jobs", idempotency=False)
    async def job(payload: dict, ctx: Context) -> None:
        pass

    async with CuttingProxy(HOST, PORT) as proxy:
        broker = await open_broker(amqp_url(port=proxy.port))
        settings = WorkerSettings(idempotency_url="memory://", metrics_interval=0.5, grace_period=1)
        worker = Worker(app, broker, settings=settings, metrics=metrics)
        try:
            yield proxy, worker
        finally:
            await worker.stop()
            await broker.close()
            direct = await open_broker(amqp_url())
            await direct.declare(app.topology)
            await direct.close()
            await remove_declared(direct)
