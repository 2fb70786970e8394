"""Middleware: a plain chain of callables around the handler.

The protocol, in full: a middleware is any `async def mw(ctx, call_next) -> result`
(a function or an object with that `__call__`). It may act before and after
`await call_next(ctx)`, change the result, raise, or not call `call_next` at all.
The first in the list runs outermost. A middleware may also define
`applies_to(handler) -> bool`: where it says False (say, a timeout for a handler
without one) that handler's chain leaves it out. What comes out of the chain decides the
settlement (see `mailbag.workers.runtime`): a result acks; `Reject` dead-letters; `RetryLater`
retries and counts an attempt; `Postpone` puts the message back without counting one.

The built-ins live one per module (`tracing`, `metrics`, `correlation`, `idempotency`,
`retry`, `breaker`, `timeout`); `mailbag.workers.middleware.defaults` is the one list that puts
them in order.
An app's own middleware runs innermost, right around the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from mailbag.workers.context import Context

Call = Callable[[Context], Awaitable[Any]]


class Middleware(Protocol):
    async def __call__(self, ctx: Context, call_next: Call) -> Any: ...


def chain(middlewares: Sequence[Middleware], innermost: Call, handler: Any = None) -> Call:
    """`innermost` wrapped in `middlewares`, the first outermost; for `handler`, those
    whose `applies_to(handler)` is False are left out."""
    call = innermost
    for mw in reversed(middlewares):
        applies_to = getattr(mw, "applies_to", None)
        if handler is not None and applies_to is not None and not applies_to(handler):
            continue
        call = _bound(mw, call)
    return call


def _bound(mw: Middleware, call_next: Call) -> Call:
    """`mw` with its next call fixed (a closure: cheaper per message than a partial)."""

    def call(ctx: Context) -> Awaitable[Any]:
        return mw(ctx, call_next)

    return call
