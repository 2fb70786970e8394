"""`TestBus.settle()` in virtual time, measured against a raw baseline in the same run.

The scenario of issue 20's acceptance test: a handler that fails twice, then succeeds,
with `RetryPolicy(max_attempts=5, initial_delay=60)` (up to 60 s and 120 s of backoff),
on `memory://`. The baseline is the same bus with a handler that succeeds at once: the
cost of a bus, a publish and a settle. Target: the retried message settles in under
2 s of wall time (virtual time skips the backoff; real time would wait up to 180 s).

    .venv/bin/python bench/virtual_time.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from mailbag import App, Context, RetryPolicy
from mailbag.testing import TestBus

POLICY = RetryPolicy(max_attempts=5, initial_delay=60)


def build_app(failures: int) -> App:
    app = App("bench")

    @app.handler("orders.placed", retry=POLICY)
    async def reserve(order: dict, ctx: Context) -> None:
        if ctx.attempt <= failures:
            raise ConnectionError("down")

    return app


async def one_run(failures: int) -> tuple[float, float, int]:
    """(wall seconds, virtual seconds, attempts) of one bus: enter, publish, settle, exit."""
    started = time.perf_counter()
    async with TestBus(build_app(failures)) as bus:
        assert bus.clock is not None
        begin = bus.clock.now()
        message_id = await bus.publish("orders.placed", {"order_id": "o-1"})
        await bus.settle()
        outcome = bus.outcome(message_id)
        virtual = bus.clock.now() - begin
    assert outcome.status == "handled" and outcome.attempts == failures + 1
    return time.perf_counter() - started, virtual, outcome.attempts


async def main(runs: int) -> None:
    raw = [await one_run(0) for _ in range(runs)]
    retried = [await one_run(2) for _ in range(runs)]
    raw_ms = statistics.median(r[0] for r in raw) * 1000
    retried_ms = statistics.median(r[0] for r in retried) * 1000
    worst_ms = max(r[0] for r in retried) * 1000
    virtual = statistics.median(r[1] for r in retried)
    print(f"baseline, handled at once:      median {raw_ms:.1f} ms wall per bus")
    print(
        f"failing twice, 60 s backoff:    median {retried_ms:.1f} ms wall (worst {worst_ms:.1f} ms), "
        f"{virtual:.0f} s of virtual time skipped"
    )
    print(f"ratio retried / baseline:       {retried_ms / raw_ms:.2f}")
    print(f"target < 2000 ms wall:          {'met' if worst_ms < 2000 else 'MISSED'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    asyncio.run(main(parser.parse_args().runs))
