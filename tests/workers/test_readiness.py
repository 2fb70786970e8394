"""What a worker reports to its probes, from events: not ready while the broker's link
is down, while the idempotency store keeps failing, or while a runner is being
replaced; not alive only while its event loop is stuck."""

from __future__ import annotations

import asyncio
import time

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings, runtime
from mailbag.workers.endpoints import Endpoints
from mailbag.workers.metrics import Metrics
from mailbag.workers.stores.memory import MemoryStore
from tests.conformance.env import eventually
from tests.observability.conftest import get


class _FailingStore(MemoryStore):
    """A memory store whose claims fail while `down` (a database out of reach)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.claims = 0

    async def claim(self, key: str, lease: float):
        self.claims += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return await super().claim(key, lease)


async def _true(value: bool) -> bool:
    return value


def _app(handled: list[int]) -> App:
    app = App("probed")

    @app.handler("jobs", queue="jobs.q", retry=RetryPolicy(max_attempts=50, initial_delay=0.01, max_delay=0.01))
    async def job(payload: dict, ctx: Context) -> None:
        handled.append(payload["n"])

    return app


async def test_a_store_that_fails_its_last_calls_makes_the_worker_unready_until_a_call_succeeds():
    # Given a ready worker whose idempotency store goes down
    broker, store, handled = MemoryBroker(), _FailingStore(), []
    async with Worker(_app(handled), broker, store=store) as worker:
        assert worker.ready
        store.down = True
        # When messages keep failing their claims
        await broker.publish("jobs", [Message("jobs", b'{"n": 1}')])
        await eventually(lambda: _true(store.claims >= runtime.STORE_FAILURES), what="claims to fail")
        # Then the worker is not ready, and says why
        await eventually(lambda: _true(not worker.ready), what="the worker unready")
        assert worker.unready().startswith("the idempotency store failed its last")
        # And ready again at the first call that succeeds
        store.down = False
        await eventually(lambda: _true(handled == [1]), what="the message handled")
        assert worker.ready
    await broker.close()


async def test_the_broker_link_going_down_and_back_drives_readiness_and_the_broker_up_gauge():
    # Given a ready worker with metrics
    broker, metrics = MemoryBroker(), Metrics()
    worker = Worker(_app([]), broker, settings=WorkerSettings(idempotency_url="memory://"), metrics=metrics)
    async with worker:
        assert worker.ready
        # When the adapter reports its connection lost, Then the worker is unready at once
        broker.link.report(False, "connection reset")
        assert worker.unready() == "broker connection down: connection reset"
        assert metrics.registry.get_sample_value("mailbag_broker_up") == 0
        # And ready at once when it reports the connection back
        broker.link.report(True)
        assert worker.ready
        assert metrics.registry.get_sample_value("mailbag_broker_up") == 1
    # Then a stopped worker no longer follows the link
    broker.link.report(False, "gone")
    assert metrics.registry.get_sample_value("mailbag_broker_up") == 1
    await broker.close()


class _Killer(BaseException):
    """Raised by a handler, caught by no middleware: it ends its runner."""


async def test_a_message_that_keeps_killing_runners_ends_in_the_dead_letter_queue():
    # Given a handler that kills its runner at every attempt, on a queue of 2 attempts
    broker, app = MemoryBroker(), App("killing")
    runs: list[int] = []

    @app.handler("jobs", queue="jobs.q", retry=RetryPolicy(max_attempts=2, initial_delay=0.01))
    async def job(payload: dict, ctx: Context) -> None:
        runs.append(ctx.attempt)
        raise _Killer

    async with Worker(app, broker, concurrency=2, settings=WorkerSettings(idempotency_url="memory://")) as worker:
        # When it gets a message
        await broker.publish("jobs", [Message("jobs", b"{}")])
        # Then each run's runner is replaced, and the message is dead-lettered after its attempts
        await eventually(lambda: _stats_are(broker, dead_letters=1), timeout=10, what="the message dead-lettered")
        assert runs == [1, 2]
        await eventually(lambda: _true(worker.ready), timeout=10, what="every runner replaced")
        assert worker.runner_restarts == 2
    await broker.close()


async def _stats_are(broker: MemoryBroker, dead_letters: int) -> bool:
    s = await broker.stats("jobs.q")
    return (s.ready, s.in_flight, s.dead_letters) == (0, 0, dead_letters)


async def test_healthz_fails_while_a_handler_blocks_the_event_loop(monkeypatch):
    # Given a worker serving its probes, whose loop counts as stuck after 0.2 s
    monkeypatch.setattr(runtime, "LOOP_STALL", 0.2)
    monkeypatch.setattr(runtime, "LOOP_BEAT", 0.05)
    broker, metrics, app = MemoryBroker(), Metrics(), App("blocking")
    seen: list[tuple[int, str]] = []

    @app.handler("jobs", queue="jobs.q", idempotency=False)
    async def job(payload: dict, ctx: Context) -> None:
        # When a handler blocks the loop (a synchronous call in an async handler)
        time.sleep(0.5)  # noqa: ASYNC251 - the fault under test
        seen.append(get(endpoints.port, "/healthz"))

    worker = Worker(app, broker, settings=WorkerSettings(idempotency_url="memory://"), metrics=metrics)
    with Endpoints(metrics.registry, worker, "127.0.0.1", 0) as endpoints:
        async with worker:
            assert await asyncio.to_thread(get, endpoints.port, "/healthz") == (200, "alive\n")
            await broker.publish("jobs", [Message("jobs", b"{}")])
            await eventually(lambda: _true(bool(seen)), what="the handler to probe")
            # Then /healthz failed while the loop was stuck, and passes once it turns again
            assert seen == [(503, "not alive: the event loop is stuck\n")]
            await eventually(lambda: _true(get(endpoints.port, "/healthz")[0] == 200), what="/healthz 200 again")
    await broker.close()
