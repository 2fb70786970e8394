"""The default chain: the built-in middleware, in order, in one list.

1. correlation - outermost, so every log line below carries the message's ids;
2. idempotency - a duplicate returns its recorded outcome before anything else runs,
   and a failed run's claim is released whatever failed below;
3. retry       - turns a failure into a backoff retry or a dead letter;
4. breaker     - inside retry, so it sees the raw failures it counts; an open circuit
   postpones, which retry lets through;
5. timeout     - innermost of the built-ins: the budget is the handler's alone;
6. the app's own middleware, right around the handler.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from broker import RetryPolicy
from workers.middleware import Middleware
from workers.middleware.breaker import BreakerPolicy, CircuitBreaker
from workers.middleware.correlation import Correlation
from workers.middleware.idempotency import Idempotency
from workers.middleware.retry import Retry
from workers.middleware.timeout import Timeout
from workers.settings import WorkerSettings
from workers.stores import IdempotencyStore


def default_chain(
    settings: WorkerSettings,
    store: IdempotencyStore,
    queue_policies: Mapping[str, RetryPolicy],
    breakers: Mapping[str, BreakerPolicy],
    own: Sequence[Middleware] = (),
) -> list[Middleware]:
    return [
        Correlation(),
        Idempotency(store, ttl=settings.idempotency_ttl, lease=settings.idempotency_lease),
        Retry(queue_policies, jitter=None if settings.retry_jitter else (lambda ceiling: ceiling)),
        CircuitBreaker(BreakerPolicy(settings.breaker_failures, settings.breaker_reset_after), breakers),
        Timeout(settings.handler_timeout),
        *own,
    ]
