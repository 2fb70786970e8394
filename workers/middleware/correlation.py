"""Correlation: the ids of the message being handled (and its queue and attempt),
visible to everything it causes.

`ctx.publish` already stamps follow-up messages (correlation id carried over, this
message as the cause). This middleware makes the same ids ambient for the duration of
the handler, so log records (via `mailbag.workers.logs.CorrelationFilter`) and publishers that
do not hold `ctx` can read them with `current()`.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, NamedTuple

from mailbag.workers.context import Context
from mailbag.workers.middleware import Call


class Ids(NamedTuple):
    correlation_id: str
    causation_id: str | None
    message_id: str
    queue: str
    attempt: int


#: the context of the handler running in this task (the ids are read from it on demand)
_current: ContextVar[Context | None] = ContextVar("mailbag_correlation", default=None)


def current() -> Ids | None:
    """The ids of the message whose handler is running in this task, if any."""
    ctx = _current.get()
    if ctx is None:
        return None
    return Ids(ctx.correlation_id, ctx.message.causation_id, ctx.message_id, ctx.queue, ctx.attempt)


class Correlation:
    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        token = _current.set(ctx)
        try:
            return await call_next(ctx)
        finally:
            _current.reset(token)
