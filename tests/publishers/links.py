"""Links to a broker for the publisher tests: the publishing side goes through
something the test can cut (a `CuttingProxy` for network brokers, `Cuttable` in memory),
the observing side reaches the broker directly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from mailbag.broker import Broker, Queue, Topology
from mailbag.broker.memory import MemoryBroker
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.publishers.faults import Cuttable


@dataclass
class Link:
    """`broker` is what publishers and relays use, through a link the test can `cut()`
    and `restore()`; `observer` reaches the same broker directly, to consume."""

    broker: Broker
    observer: Broker
    cut: Callable[[], None]
    restore: Callable[[], None]
    #: how another process reaches the broker directly (memory: a broker of its own)
    url: str = "memory://"
    run_id: str = field(default_factory=lambda: run_name("p"))

    def name(self, base: str) -> str:
        return f"{self.run_id}-{base}"

    async def queue(self, topic: str, **settings: object) -> Queue:
        queue = Queue(self.name(f"q-{topic}"), (topic,), **settings)
        await self.observer.declare(Topology(queues=(queue,)))
        return queue


@asynccontextmanager
async def memory_link() -> AsyncIterator[Link]:
    inner = MemoryBroker()
    broker = Cuttable(inner)
    try:
        yield Link(broker, inner, broker.cut, broker.restore)
    finally:
        await inner.close()


@asynccontextmanager
async def _through_proxy(open_broker, host: str, port: int, url_via) -> AsyncIterator[Link]:
    """`url_via(host, port)` is the broker's URL at an address; the observer goes
    straight to `host:port`, the publishing side through a proxy."""
    proxy = await CuttingProxy(host, port).start()
    direct = url_via(host, port)
    observer = await open_broker(direct)

    def cut() -> None:  # and keep it down until restored
        proxy.refuse = True
        proxy.cut()

    def restore() -> None:
        proxy.refuse = False

    try:
        broker = await open_broker(url_via("127.0.0.1", proxy.port))
        try:
            yield Link(broker, observer, cut, restore, direct)
        finally:
            restore()
            await broker.close()
    finally:
        await observer.close()
        await proxy.stop()


@asynccontextmanager
async def amqp_link() -> AsyncIterator[Link]:
    from mailbag.broker.rabbitmq import open_broker
    from tests.rabbitmq.service import HOST, PORT, amqp_url

    def fast_open(url: str):
        return open_broker(url, reconnect_interval=0.2, publish_timeout=2.0)

    async with _through_proxy(fast_open, HOST, PORT, lambda host, port: amqp_url(host, port)) as link:
        yield link


@asynccontextmanager
async def sqs_link() -> AsyncIterator[Link]:
    """SNS/SQS on moto_server over HTTP, names prefixed per test and deleted after.
    Dummy AWS credentials stay in the environment for the test (child processes too)."""
    from mailbag.broker.sqs import open_broker
    from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, shared_moto_server

    endpoint = shared_moto_server()
    prefix = f"p{uuid.uuid4().hex[:8]}-"

    def url_via(host: str, port: int) -> str:
        return f"sqs://?region={REGION}&endpoint=http://{host}:{port}&prefix={prefix}&wait=1"

    with dummy_aws_credentials():
        try:
            async with _through_proxy(open_broker, "127.0.0.1", int(endpoint.rsplit(":", 1)[1]), url_via) as link:
                yield link
        finally:
            await asyncio.to_thread(delete_prefixed, endpoint, prefix)
