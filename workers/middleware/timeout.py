"""Timeout: a handler over its budget is cancelled, and the try fails with
`HandlerTimeout` (a `TimeoutError`, so the retry middleware schedules another).

A plain (non-async) handler runs in a thread that cannot be interrupted: its try is
failed and retried all the same, but the thread runs on to its end.
"""

from __future__ import annotations

from typing import Any

from mailbag.broker.clock import Clock, RealClock
from mailbag.broker.errors import MailbagError
from mailbag.workers.context import Context
from mailbag.workers.middleware import Call


class HandlerTimeout(MailbagError, TimeoutError):
    """The handler ran past its budget and was cancelled."""


class Timeout:
    """Budget per handler: its own `timeout`, else `default` (None: no limit), measured
    on `clock` (the worker's)."""

    def __init__(self, default: float | None = None, clock: Clock | None = None) -> None:
        self.default = default
        self.clock: Clock = clock or RealClock()

    def applies_to(self, handler: Any) -> bool:
        return (handler.timeout or self.default) is not None

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        budget = ctx.handler.timeout or self.default
        try:
            async with self.clock.timeout(budget) as scope:
                return await call_next(ctx)
        except TimeoutError as exc:
            if not scope.expired():
                raise  # the handler's own TimeoutError, not ours
            raise HandlerTimeout(f"{ctx.handler.name} ran past its {budget:g}s budget") from exc
