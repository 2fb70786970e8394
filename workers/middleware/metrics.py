"""Metrics of the handler run: how long it took, whether it failed, how many run at
once (see `mailbag.workers.metrics`). Outermost, so the time covers the whole chain. In the
chain only when the worker was given `Metrics`."""

from __future__ import annotations

import time
from typing import Any

from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone
from mailbag.workers.metrics import Metrics
from mailbag.workers.middleware import Call


class Measure:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        series = self.metrics.of(ctx.queue, ctx.handler.name)
        series.in_flight.inc()
        started = time.perf_counter()
        try:
            return await call_next(ctx)
        except Postpone:
            raise  # waiting for a circuit or a running duplicate is not a failure
        except Exception:
            series.failed.inc()
            raise
        finally:
            series.duration.observe(time.perf_counter() - started)
            series.in_flight.dec()
