"""Timeout: a handler over its budget is cancelled, and the try fails with
`HandlerTimeout` (a `TimeoutError`, so the retry middleware schedules another).

A plain (non-async) handler runs in a thread that cannot be interrupted: its try is
failed and retried all the same, but the thread runs on to its end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from mailbag.broker.errors import MailbagError
from mailbag.workers.context import Context
from mailbag.workers.middleware import Call


class HandlerTimeout(MailbagError, TimeoutError):
    """The handler ran past its budget and was cancelled."""


class Timeout:
    """Budget per handler: its own `timeout`, else `default` (None: no limit)."""

    def __init__(self, default: float | None = None) -> None:
        self.default = default

    def applies_to(self, handler: Any) -> bool:
        return (handler.timeout or self.default) is not None

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        budget = ctx.handler.timeout or self.default
        scope = asyncio.timeout(budget)
        try:
            async with scope:
                return await call_next(ctx)
        except TimeoutError as exc:
            if not scope.expired():
                raise  # the handler's own TimeoutError, not ours
            raise HandlerTimeout(f"{ctx.handler.name} ran past its {budget:g}s budget") from exc
