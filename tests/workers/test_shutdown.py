"""Graceful shutdown through real signals delivered to this process: the first lets
in-flight handlers finish and gives the rest back; a second cuts the grace short."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from mailbag.broker import Message
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, ConsumerFailed, Context, Worker
from mailbag.workers.shutdown import serve
from tests.conformance.env import eventually


def _app(handled: list[int], started: asyncio.Event, gate: asyncio.Event) -> App:
    app = App("shop")

    @app.handler("orders", queue="orders.q", idempotency=False)
    async def handle(payload: dict, ctx: Context) -> None:
        started.set()
        await gate.wait()
        handled.append(payload["n"])

    return app


async def test_sigterm_finishes_in_flight_handlers_returns_the_rest_and_exits_0():
    # Given a worker with four handlers in flight and a backlog behind them
    broker = MemoryBroker()
    handled: list[int] = []
    started, gate = asyncio.Event(), asyncio.Event()
    app = _app(handled, started, gate)
    await broker.declare(app.topology)
    await broker.publish("orders", [Message("orders", b'{"n": %d}' % n) for n in range(50)])
    worker = Worker(app, broker, concurrency=4, prefetch=8, grace_period=10)
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(started.wait(), 5)
    await eventually(lambda: _in_flight(broker, 8), what="prefetch to fill")
    # When SIGTERM arrives, then the in-flight handlers get to finish
    os.kill(os.getpid(), signal.SIGTERM)
    await eventually(lambda: _stopping(worker), what="the signal to be seen")
    gate.set()
    # Then the worker exits 0, the four finished, and the rest are back in the queue
    assert await asyncio.wait_for(serving, 10) == 0
    assert sorted(handled) == [0, 1, 2, 3]
    s = await broker.stats("orders.q")
    assert (s.ready, s.in_flight) == (46, 0)
    rest = await broker.browse("orders.q", limit=100)
    assert sorted(int(m.body[6:-1]) for m in rest) == list(range(4, 50))


async def test_a_second_signal_cuts_the_grace_period_short():
    # Given a worker whose handler never finishes, with a long grace period
    broker = MemoryBroker()
    handled: list[int] = []
    started, never = asyncio.Event(), asyncio.Event()
    app = _app(handled, started, never)
    await broker.declare(app.topology)
    await broker.publish("orders", [Message("orders", b'{"n": 1}')])
    worker = Worker(app, broker, grace_period=600)
    serving = asyncio.create_task(serve(worker))
    await asyncio.wait_for(started.wait(), 5)
    # When SIGINT comes twice
    os.kill(os.getpid(), signal.SIGINT)
    await eventually(lambda: _stopping(worker), what="the first signal to be seen")
    os.kill(os.getpid(), signal.SIGINT)
    # Then it exits at once with status 1, and the message is back in the queue
    assert await asyncio.wait_for(serving, 5) == 1
    assert handled == [] and (await broker.stats("orders.q")).ready == 1


async def _in_flight(broker, n) -> bool:
    return (await broker.stats("orders.q")).in_flight == n


async def _stopping(worker) -> bool:
    return worker.stopping


class _FailingConsumers(MemoryBroker):
    """A memory broker whose consumers fail on command, as a consumer the broker gave
    up on does."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = asyncio.Event()

    def consume(self, queue: str, prefetch: int = 10):
        broker = self

        class Failing:
            def __aiter__(self):
                return self

            async def __anext__(self):
                await broker.fail.wait()
                raise ConnectionError("channel closed by the broker")

            def stop(self) -> None:
                pass

            async def close(self) -> None:
                pass

        return Failing()


async def test_a_worker_whose_consumer_fails_stops_and_exits_1(caplog):
    # Given a worker being served
    broker = _FailingConsumers()
    worker = Worker(_app([], asyncio.Event(), asyncio.Event()), broker)
    served = asyncio.ensure_future(serve(worker))
    await eventually(lambda: _true(worker.ready), what="the worker consuming")
    # When its consumer fails
    broker.fail.set()
    # Then it stops, says which queue and why, and exits 1 so that it is restarted
    assert await asyncio.wait_for(served, 10) == 1
    assert not worker.ready
    [line] = [r for r in caplog.records if r.getMessage() == "stopped consuming"]
    assert (line.queue, line.error) == ("orders.q", "ConnectionError('channel closed by the broker')")


async def test_run_raises_when_a_consumer_ends_on_its_own():
    broker = MemoryBroker()
    worker = Worker(_app([], asyncio.Event(), asyncio.Event()), broker)
    running = asyncio.ensure_future(worker.run())
    await eventually(lambda: _true(worker.ready), what="the worker consuming")
    await broker.close()  # its consumers end
    with pytest.raises(ConsumerFailed):
        await asyncio.wait_for(running, 10)


async def _true(value: bool) -> bool:
    return value
