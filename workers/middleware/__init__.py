"""Middleware: a plain chain of callables around the handler.

A middleware is `async def mw(ctx, call_next) -> result`: it may act before and after
`await call_next(ctx)`, change the outcome, or not call it at all. The first in the
list runs outermost. What the chain returns or raises decides the settlement
(see `workers.runtime`).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Awaitable, Callable, Protocol, Sequence

from workers.context import Context

Call = Callable[[Context], Awaitable[Any]]


class Middleware(Protocol):
    async def __call__(self, ctx: Context, call_next: Call) -> Any: ...


def chain(middlewares: Sequence[Middleware], innermost: Call) -> Call:
    call = innermost
    for mw in reversed(middlewares):
        call = partial(mw, call_next=call)
    return call
