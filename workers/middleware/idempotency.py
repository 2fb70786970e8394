"""Idempotency: a message whose key was handled before is not handled again.

The key is the message id, or the handler's `idempotency=` function of the payload,
scoped by queue and topic (one message fanned out to two queues is two jobs). The
first run claims the key with a lease, runs, and records its outcome (the handler's
return value as JSON) for `ttl` seconds. A duplicate returns the recorded outcome
without calling the handler. A duplicate that arrives while the first run still holds
its lease is postponed (no attempt used) and looks again within `RECHECK` seconds; a lease that runs out
belongs to a run that died, and the next delivery takes over. A failed run releases
its claim, so its retry runs. A host that kills its runs at a known time (a Lambda
invocation at its timeout) sets `run_ends_by`: the lease then ends that much later
plus `LEASE_SLACK`, so a run killed with its host holds its key no longer than that.

Transactional handlers (`transactional=True`) get `ctx.transaction`: the record
commits in the same database transaction as their writes, so a crash anywhere before
the commit leaves neither, and a crash after it leaves both.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

from pydantic_core import to_jsonable_python

from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone
from mailbag.workers.middleware import Call
from mailbag.workers.stores import Claim, IdempotencyStore, TransactionalStore

log = logging.getLogger("mailbag.worker")

#: the longest a duplicate waits before it looks at the first run's record again
RECHECK = 1.0
#: seconds a lease outlasts `run_ends_by`: room for clocks of hosts sharing a store
LEASE_SLACK = 2.0
#: the monotonic time by which the current run is over for sure, or None; tasks
#: started after it is set inherit it
run_ends_by: ContextVar[float | None] = ContextVar("run_ends_by", default=None)


class Idempotency:
    def __init__(self, store: IdempotencyStore, *, ttl: float, lease: float) -> None:
        self.store = store
        self.ttl = ttl
        self.lease = lease

    def applies_to(self, handler: Any) -> bool:
        return handler.idempotency is not False

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        handler = ctx.handler
        how = handler.idempotency
        key = f"{handler.queue}:{handler.topic}:{ctx.delivery.message.id if how is True else how(ctx.payload)}"
        if handler.transactional:
            return await self._in_transaction(ctx, call_next, key)
        claim = await self.store.claim(key, self._lease(handler.timeout))
        if claim.status != "claimed":
            return _settled_before(claim, ctx)
        try:
            result = await call_next(ctx)
        except BaseException:
            await self.store.release(key, claim.token)
            raise
        await self.store.complete(key, claim.token, _dump(result), self.ttl)
        return result

    def _lease(self, timeout: float | None) -> float:
        """How long a claim holds its key: long enough for the handler's timeout, and
        no longer than the run can live."""
        lease = self.lease if timeout is None else max(self.lease, 2 * timeout)
        ends_by = run_ends_by.get()
        if ends_by is not None:
            lease = min(lease, max(0.0, ends_by - time.monotonic()) + LEASE_SLACK)
        return lease

    async def _in_transaction(self, ctx: Context, call_next: Call, key: str) -> Any:
        assert isinstance(self.store, TransactionalStore)  # checked when the worker starts
        async with self.store.transaction(key, self.ttl) as txn:
            if txn.claim.status != "claimed":
                return _settled_before(txn.claim, ctx)
            ctx.extras["transaction"] = txn.connection
            result = await call_next(ctx)
            await txn.record(_dump(result))
            return result


def _settled_before(claim: Claim, ctx: Context) -> Any:
    """The recorded outcome of a duplicate, or `Postpone` while the first run is on."""
    if claim.status == "busy":
        raise Postpone(min(RECHECK, claim.retry_in), "the same message is being handled elsewhere")
    log.info("duplicate skipped", extra={"message_id": ctx.message_id, "queue": ctx.queue, "attempt": ctx.attempt})
    return json.loads(claim.outcome or "null")


def _dump(result: Any) -> str:
    if result is None:
        return "null"
    return json.dumps(to_jsonable_python(result, fallback=str))
