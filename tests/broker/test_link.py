"""A broker's `link` follows its connection as the adapter sees it: down when the
network to the broker fails under a consumer, up again once it is back, each change
passed to its watchers (what a worker's readiness and `mailbag_broker_up` follow)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mailbag.broker import Message, Queue, Topology
from mailbag.broker.base import Link
from tests.publishers.links import amqp_link, sqs_link

LINKS = {"rabbitmq": amqp_link, "sqs": sqs_link}


def test_a_link_tells_its_watchers_of_each_change_once():
    link, seen = Link(), []
    link.watch(seen.append)
    link.report(True)
    link.report(False, "connection reset")
    link.report(False, "still down")
    assert (link.up, link.reason) == (False, "connection reset")
    link.report(True)
    link.unwatch(seen.append)
    link.report(False, "gone")
    assert seen == [False, True]


async def _changes(link: Link, up: bool, timeout: float) -> float:
    """Seconds until `link` reports `up`, told through a watcher."""
    began, changed = time.monotonic(), asyncio.Event()

    def watcher(now_up: bool) -> None:
        if now_up == up:
            changed.set()

    link.watch(watcher)
    try:
        await asyncio.wait_for(changed.wait(), timeout)
    finally:
        link.unwatch(watcher)
    return time.monotonic() - began


@pytest.mark.parametrize("backend", list(LINKS))
async def test_the_link_goes_down_when_the_network_fails_under_a_consumer_and_up_when_it_is_back(backend):
    # Given a consumer reading a queue through a link the test can cut
    async with LINKS[backend]() as link:
        queue = Queue(link.name("q"), (link.name("t"),))
        await link.observer.declare(Topology(queues=(queue,)))
        consumer = link.broker.consume(queue.name, prefetch=1)
        await link.observer.send(queue.name, [Message(queue.topics[0], b"{}")])
        await (await asyncio.wait_for(consumer.__anext__(), 30)).ack()
        reading = asyncio.ensure_future(consumer.__anext__())  # the consumer waits for more
        try:
            assert link.broker.link.up
            # When the network to the broker fails, Then the link says so
            link.cut()
            down = await _changes(link.broker.link, False, timeout=30)
            assert link.broker.link.reason
            # And says it is back once the network is
            link.restore()
            up = await _changes(link.broker.link, True, timeout=30)
            print(f"{backend}: link down {down:.2f}s after the cut, up {up:.2f}s after the restore")
        finally:
            reading.cancel()  # how the cancelled read ends is not this test's concern
            await asyncio.gather(reading, return_exceptions=True)
            await consumer.close()
            await link.observer.remove(Topology(queues=(queue,)))
