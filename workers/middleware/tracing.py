"""Tracing: a `process <queue>` span per delivery (see `mailbag.broker.tracing`), current while
the rest of the chain and the handler run, so what the handler publishes continues the
message's trace. The outcome the chain chose is recorded on the span: `retry` with its
delay, `postpone`, or `dead_letter` with the reason the dead letter will carry.

Without OpenTelemetry, or with no tracer provider set when the worker starts, it is
left out of every chain and costs nothing.
"""

from __future__ import annotations

from typing import Any

from mailbag.broker import tracing
from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone, Reject, RetryLater
from mailbag.workers.middleware import Call


class Tracing:
    def applies_to(self, handler: Any) -> bool:
        return tracing.active()

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        with tracing.processing(ctx.broker, ctx.delivery, ctx.attempt) as span:
            try:
                return await call_next(ctx)
            except RetryLater as exc:
                tracing.retried(span, exc.delay, str(exc), exc.__cause__)
                raise
            except Postpone as exc:
                tracing.postponed(span, exc.delay, str(exc))
                raise
            except Reject as exc:
                tracing.dead_lettered(span, str(exc) or "rejected by handler", exc.__cause__ or exc)
                raise
            except Exception as exc:  # the worker dead-letters what no middleware turned into an outcome
                tracing.dead_lettered(span, f"unexpected error: {type(exc).__name__}: {exc}", exc)
                raise
