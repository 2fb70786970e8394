"""What the conformance suite needs from a backend, and helpers its tests share.

A backend joins the suite by adding a `backend_<name>.py` module beside this one
that defines `BACKENDS`, a list of `Backend`. Nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from mailbag.broker import Broker, Delivery, Queue, RetryPolicy, Subscription, Topology
from mailbag.broker.base import Consumer
from mailbag.workers import App, Context
from tests.names import run_name


@dataclass(frozen=True)
class Features:
    #: test time is under the suite's control (a manual clock): a delay can be checked
    #: to hold exactly, and `advance` makes it pass at once
    manual_clock: bool = False
    #: settings applied to every queue the suite declares (e.g. kind="quorum", ordered=True)
    queue_defaults: dict[str, Any] = field(default_factory=dict)
    #: shortest retry delay the broker honours, in seconds
    min_delay: float = 0.0
    #: most a retry may come later than its delay (the documented bound), in seconds
    delay_bound: float = 0.0
    #: why a message past the queue's receive limit can be lost when its dead-letter
    #: queue is deleted (the broker redrives it there itself), or None where it stays
    redrive_without_dead_letter_queue: str | None = None
    #: the ordering key a plain client's message reads from the broker's own field for it
    #: (a FIFO SQS queue's message group), or None where a plain client's message has none
    plain_ordering_key: str | None = None


@dataclass
class Env:
    broker: Broker
    features: Features
    advance: Callable[[float], Awaitable[None]]
    #: delete a queue behind the adapter's back (to make a settlement fail)
    delete_queue: Callable[[str], Awaitable[None]] | None = None
    #: publish as a plain client would (no id, no timestamp, no content type, none of
    #: our headers): (topic, queue subscribed to it, body, headers); None where no
    #: plain client can reach the broker (memory)
    plain_publish: Callable[[str, str, bytes, dict[str, Any]], Awaitable[None]] | None = None
    #: the broker's connection as it is now (a reconnect, such as one after the broker closed
    #: it, gives another); None where there is no connection to lose (memory, SQS over HTTP)
    connection: Callable[[], object] | None = None
    run_id: str = field(default_factory=lambda: run_name("t"))

    def name(self, base: str) -> str:
        return f"{self.run_id}-{base}"

    def queue(self, base: str, *subscriptions: str | Subscription, **settings: Any) -> Queue:
        merged = {**self.features.queue_defaults, **settings}
        return Queue(self.name(base), subscriptions, **merged)

    async def declare(self, *queues: Queue, topics: tuple[str, ...] = ()) -> Topology:
        topology = Topology(queues=queues, topics=topics)
        await self.broker.declare(topology)
        return topology

    def policy(self, max_attempts: int = 3) -> RetryPolicy:
        d = self.features.min_delay
        return RetryPolicy(max_attempts=max_attempts, initial_delay=d, multiplier=1.0, max_delay=d)


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[], AbstractAsyncContextManager[Env]]


async def next_delivery(consumer: Consumer, timeout: float = 15.0) -> Delivery:
    return await asyncio.wait_for(anext(consumer), timeout)


async def nothing_within(consumer: Consumer, seconds: float) -> bool:
    """True if the consumer yields nothing for `seconds` (cancelling the wait loses nothing)."""
    try:
        d = await asyncio.wait_for(anext(consumer), seconds)
    except (TimeoutError, StopAsyncIteration):
        return True
    await d.retry(0)
    return False


async def drain(consumer: Consumer, count: int, timeout: float = 30.0) -> list[Delivery]:
    """Take `count` deliveries, acking each."""
    got = []

    async def run() -> None:
        async for d in consumer:
            got.append(d)
            await d.ack()
            if len(got) == count:
                return

    await asyncio.wait_for(run(), timeout)
    return got


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "") -> None:
    """Poll `check` until true or fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(0.02)


#: the window over which a poison message that cannot be dead-lettered is watched
WINDOW = 15.0
#: most runs (and log lines) of it in WINDOW: it comes back after 1, 2, 4, 8 s
#: (`mailbag.broker.backoff`), so at 0, 1, 3, 7 and 15 s: 5, and 1 for a return that
#: SQS's whole-second visibility or a busy machine shifts into the window
POISON_RUNS_MAX = 6


class PoisonApp:
    """An app whose one handler fails on a `{"poison": true}` payload, counting those
    runs, and records the ids of the messages it handles."""

    def __init__(self, name: str, topic: str, queue: str, **settings: Any) -> None:
        self.app = App(name)
        self.handled: set[str] = set()
        self.poison_runs = 0

        @self.app.handler(topic, queue=queue, retry_on=(), idempotency=False, **settings)
        async def work(payload: dict, ctx: Context) -> None:
            if payload.get("poison"):
                self.poison_runs += 1
                raise ValueError("poison")
            self.handled.add(ctx.message_id)


def mailbag_warnings(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.WARNING and r.name.startswith("mailbag")]


def assert_backed_off(runs: int, lines: list[logging.LogRecord]) -> None:
    """The poison message ran a few times in WINDOW, with one log line per return."""
    print(f"poison runs in {WINDOW:g}s: {runs}; log lines: {len(lines)}")
    assert 2 <= runs <= POISON_RUNS_MAX, runs
    assert runs <= len(lines) <= POISON_RUNS_MAX, [r.getMessage() for r in lines]
