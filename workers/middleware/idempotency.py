"""Idempotency: a message whose key was handled before is not handled again.

The key is the message id, or the handler's `idempotency=` function of the payload,
scoped by queue and topic (one message fanned out to two queues is two jobs). The
first run claims the key with a short lease (`lease`, 30 s by default), renews it
every third of the lease while the handler runs (a heartbeat), and records its outcome
(the handler's return value as JSON) for `ttl` seconds. A duplicate returns the
recorded outcome without calling the handler. A duplicate that arrives while the first
run holds the key is postponed (no attempt used) until that lease would run out, in
whole seconds: a live run has renewed it by then, or finished; a dead run's lease has
expired and the duplicate takes over. So a killed worker's claims free up within one
lease, at the cost of a delivery or two each. A failed run releases its claim, so its
retry runs. A host that kills its runs at a known time (a Lambda invocation at its
timeout) sets `run_ends_by`: the lease then ends no later than that plus
`LEASE_SLACK`, so a run killed with its host holds its key no longer than that.

Transactional handlers (`transactional=True`) get `ctx.transaction`: the record
commits in the same database transaction as their writes, so a crash anywhere before
the commit leaves neither, and a crash after it leaves both.

The store failing (a locked SQLite file, a dropped PostgreSQL or Redis connection) is
not the message's fault: claiming, opening or committing the transaction raise
`StoreError`, which the retry middleware (outside this one) always retries under the
handler's policy. Recording the outcome of a run that succeeded outside a transaction
is retried here, a few times with backoff, without running the handler again (and so
is releasing a failed run's claim); if the store stays down the message is acked
anyway (its effect happened) and the loss of the record is logged. `failing` counts
the store calls that failed in a row (any call that succeeds resets it): the worker is
not ready while the store keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from mailbag.broker.errors import StoreError
from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone
from mailbag.workers.middleware import Call
from mailbag.workers.stores import Claim, IdempotencyStore, TransactionalStore

log = logging.getLogger("mailbag.worker")

#: seconds a lease outlasts `run_ends_by`: room for clocks of hosts sharing a store
LEASE_SLACK = 2.0
#: the monotonic time by which the current run is over for sure, or None; tasks
#: started after it is set inherit it
run_ends_by: ContextVar[float | None] = ContextVar("run_ends_by", default=None)
#: tries at recording the outcome of a run that succeeded (or releasing the claim of one
#: that failed), before giving up on the record
STORE_TRIES = 5

T = TypeVar("T")


class Idempotency:
    def __init__(self, store: IdempotencyStore, *, ttl: float, lease: float) -> None:
        self.store = store
        self.ttl = ttl
        self.lease = lease
        #: store calls failed in a row
        self.failing = 0

    def applies_to(self, handler: Any) -> bool:
        return handler.idempotency is not False

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        handler = ctx.handler
        how = handler.idempotency
        key = f"{handler.queue}:{handler.topic}:{ctx.delivery.message.id if how is True else how(ctx.payload)}"
        if handler.transactional:
            return await self._in_transaction(ctx, call_next, key)
        claim = await self._step("claiming the key", lambda: self.store.claim(key, self._lease()))
        if claim.status != "claimed":
            return _settled_before(claim, ctx)
        heartbeat = asyncio.ensure_future(self._heartbeat(ctx, key, claim.token))
        try:
            result = await call_next(ctx)
        except BaseException:
            await _stopped(heartbeat)
            await self._release(ctx, key, claim.token)
            raise
        await _stopped(heartbeat)
        await self._complete(ctx, key, claim.token, _dump(result))
        return result

    async def _in_transaction(self, ctx: Context, call_next: Call, key: str) -> Any:
        assert isinstance(self.store, TransactionalStore)  # checked when the worker starts
        ran = False
        try:
            async with self.store.transaction(key, self.ttl) as txn:
                if txn.claim.status != "claimed":
                    return _settled_before(txn.claim, ctx)
                ctx.extras["transaction"] = txn.connection
                ran = True
                result = await call_next(ctx)
                ran = False  # from here on, failures are the store's
                await txn.record(_dump(result))
        except Postpone:
            self.failing = 0
            raise
        except Exception as exc:
            if ran:
                raise
            self.failing += 1
            raise StoreError(f"idempotency store failed in the handler's transaction: {_what(exc)}") from exc
        self.failing = 0
        return result

    async def _step(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run one store call, counted in `failing`; a failure becomes `StoreError`,
        which is always retried."""
        try:
            answer = await step()
        except Exception as exc:
            self.failing += 1
            raise StoreError(f"idempotency store failed {what}: {_what(exc)}") from exc
        self.failing = 0
        return answer

    def _lease(self) -> float:
        """How long a claim (or a renewal) holds its key: the lease, and no longer than
        the run can live."""
        ends_by = run_ends_by.get()
        if ends_by is None:
            return self.lease
        return min(self.lease, max(0.0, ends_by - time.monotonic()) + LEASE_SLACK)

    async def _heartbeat(self, ctx: Context, key: str, token: str) -> None:
        """Renew the run's lease every third of it until cancelled. A renewal that fails
        is tried again at the next beat; a lease lost to another run is logged."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                held = await self._step("renewing the lease", lambda: self.store.extend(key, token, self._lease()))
            except StoreError as exc:
                log.warning(
                    "could not renew the idempotency lease", extra=_where(ctx, error=_what(exc.__cause__ or exc))
                )
                continue
            if not held:
                log.warning(
                    "the idempotency lease ran out under a running handler; another run may take the message",
                    extra=_where(ctx),
                )
                return

    async def _release(self, ctx: Context, key: str, token: str) -> None:
        """Drop a failed run's claim, retrying the store a few times (so its retry need
        not wait out the lease); if the store stays down, its lease runs out instead."""
        try:
            await self._persist(ctx, "releasing the claim", lambda: self.store.release(key, token))
        except StoreError as exc:
            log.warning(
                "could not release the idempotency claim; it expires with its lease",
                extra=_where(ctx, error=_what(exc.__cause__ or exc)),
            )

    async def _complete(self, ctx: Context, key: str, token: str, outcome: str) -> None:
        """Record a successful run's outcome, retrying the store, never the handler."""
        try:
            await self._persist(
                ctx, "recording the outcome", lambda: self.store.complete(key, token, outcome, self.ttl)
            )
        except StoreError as exc:
            log.error(
                "handled, but the outcome could not be recorded: a duplicate may run again",
                extra=_where(ctx, error=_what(exc.__cause__ or exc)),
            )

    async def _persist(self, ctx: Context, what: str, step: Callable[[], Awaitable[None]]) -> None:
        """One store write after a run, tried `STORE_TRIES` times with backoff."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(STORE_TRIES), wait=wait_exponential(multiplier=0.1, max=2.0), reraise=True
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.warning("%s again", what, extra=_where(ctx, action="store retry"))
                await self._step(what, step)


def _settled_before(claim: Claim, ctx: Context) -> Any:
    """The recorded outcome of a duplicate, or `Postpone` while the first run is on."""
    if claim.status == "busy":
        raise Postpone(math.ceil(claim.retry_in), "the same message is being handled elsewhere")
    log.info("duplicate skipped", extra={"message_id": ctx.message_id, "queue": ctx.queue, "attempt": ctx.attempt})
    return json.loads(claim.outcome or "null")


async def _stopped(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _where(ctx: Context, **more: Any) -> dict[str, Any]:
    return {"message_id": ctx.message_id, "queue": ctx.queue, "attempt": ctx.attempt, **more}


def _what(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _dump(result: Any) -> str:
    if result is None:
        return "null"
    return json.dumps(to_jsonable_python(result, fallback=str))
