"""/readyz tells the truth within 2 s, from events rather than a poll: 503 once the
broker's connection drops and 200 once it is back; 503 while a runner killed by an
exception is being replaced, 200 once it is, the replacement counted."""

from __future__ import annotations

import asyncio
import time

from mailbag.broker import Message, RetryPolicy
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, Context, Worker, WorkerSettings
from mailbag.workers.endpoints import Endpoints
from mailbag.workers.metrics import Metrics
from tests.faults.workload import proxied_worker
from tests.observability.conftest import get, scrape

#: the longest /readyz may lag what happened
WITHIN = 2.0


async def _turns(port: int, status: int, timeout: float) -> float:
    """Seconds until /readyz answers `status`; fails after `timeout`."""
    began = time.monotonic()
    while (await asyncio.to_thread(get, port, "/readyz"))[0] != status:
        waited = time.monotonic() - began
        assert waited < timeout, f"/readyz not {status} after {waited:.1f}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def test_readyz_follows_the_broker_connection_within_2s():
    # Given a worker on RabbitMQ through a proxy (default reconnect interval), serving its probes
    metrics = Metrics()
    async with proxied_worker("rdy", metrics) as (proxy, worker):
        with Endpoints(metrics.registry, worker, "127.0.0.1", 0) as endpoints:
            await worker.start()
            await _turns(endpoints.port, 200, 10)
            # When the broker becomes unreachable (connections cut, new ones refused)
            proxy.refuse = True
            proxy.cut()
            down = await _turns(endpoints.port, 503, WITHIN)
            # Then /readyz is 503 within 2 s, and says why, and the liveness probe still passes
            status, body = await asyncio.to_thread(get, endpoints.port, "/readyz")
            assert (status, body.startswith("not ready: broker connection down")) == (503, True), body
            assert (await asyncio.to_thread(get, endpoints.port, "/healthz"))[0] == 200
            assert (await scrape(endpoints.port))[("mailbag_broker_up", ())] == 0
            # And 200 within 2 s once the broker is reachable again
            await asyncio.wait_for(proxy.refused.wait(), 10)  # the client is dialling again
            proxy.refuse = False
            up = await _turns(endpoints.port, 200, WITHIN)
            assert (await scrape(endpoints.port))[("mailbag_broker_up", ())] == 1
            print(f"/readyz 503 {down:.2f}s after the outage, 200 {up:.2f}s after recovery")


class Injected(BaseException):
    """An exception no middleware catches (as a cancellation leaking from a library
    would be): it ends the runner that runs the handler."""


async def test_a_runner_killed_by_an_exception_is_replaced_counted_and_readyz_follows():
    # Given a worker of 4 runners serving its probes, and a handler that raises an
    # exception no middleware catches on its first attempt
    broker, metrics, app = MemoryBroker(), Metrics(), App("runners")
    runs: list[int] = []

    @app.handler("jobs", queue="jobs.q", retry=RetryPolicy(max_attempts=3, initial_delay=0.05))
    async def job(payload: dict, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Injected("injected")

    worker = Worker(app, broker, concurrency=4, settings=WorkerSettings(idempotency_url="memory://"), metrics=metrics)
    try:
        with Endpoints(metrics.registry, worker, "127.0.0.1", 0) as endpoints:
            await worker.start()
            await _turns(endpoints.port, 200, 10)
            # When a message kills the runner that handles it
            await broker.publish("jobs", [Message("jobs", b"{}")])
            # Then /readyz says a runner is missing, then is 200 again once it is replaced
            fewer = await _turns(endpoints.port, 503, WITHIN)
            back = await _turns(endpoints.port, 200, WITHIN)
            samples = await scrape(endpoints.port)
            assert samples[("mailbag_runner_restarts_total", ())] == 1
            # And the message it held was retried, and handled on its second attempt
            began = time.monotonic()
            while runs != [1, 2] or (await broker.stats("jobs.q")).in_flight:
                assert time.monotonic() - began < 10, f"runs {runs}"
                await asyncio.sleep(0.02)
            stats = await broker.stats("jobs.q")
            assert (stats.ready, stats.in_flight, stats.dead_letters) == (0, 0, 0)
            assert worker.runner_restarts == 1 and len(worker._runners) == 4
            assert not any(r.done() for r in worker._runners)
            print(f"/readyz 503 {fewer:.2f}s after the runner died, 200 {back:.2f}s later")
    finally:
        await worker.stop()
        await broker.close()
