"""Retry: turns a handler's failure into the message's next step.

- a retryable error (one of the handler's `retry_on`) with attempts left ->
  `RetryLater` after exponential backoff with full jitter: a delay drawn uniformly
  from [0, the policy's delay for this attempt], so a burst of failures does not come
  back as a burst;
- the last attempt, or an error that is not retryable -> `Reject`, raised from the
  error so the dead letter carries its type, text and traceback.

A `StoreError` (the idempotency store failed, not the handler) is retryable whatever
the handler's `retry_on` says: the message did nothing wrong.

The schedule is the handler's `retry` policy, else its queue's (topology). Outcomes
that already say what to do (`Reject`, `RetryLater`, `Postpone`) pass through.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from mailbag.broker import RetryPolicy
from mailbag.broker.errors import StoreError
from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone, Reject, RetryLater
from mailbag.workers.middleware import Call


class Retry:
    def __init__(
        self, queue_policies: Mapping[str, RetryPolicy], jitter: Callable[[float], float] | None = None
    ) -> None:
        """`jitter(ceiling)` picks the delay; default: uniform in [0, ceiling]."""
        self.queue_policies = dict(queue_policies)
        self.jitter = jitter or (lambda ceiling: random.uniform(0.0, ceiling))

    def policy(self, ctx: Context) -> RetryPolicy:
        return ctx.handler.retry or self.queue_policies.get(ctx.queue) or RetryPolicy()

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        try:
            return await call_next(ctx)
        except (Reject, RetryLater, Postpone):
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, (*ctx.handler.retry_on, StoreError)):
                raise Reject(f"not retryable: {error}") from exc
            policy = self.policy(ctx)
            if ctx.attempt >= policy.max_attempts:
                raise Reject(f"failed after {ctx.attempt} attempt(s): {error}") from exc
            raise RetryLater(self.jitter(policy.delay(ctx.attempt)), error) from exc
