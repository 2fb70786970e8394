"""The default chain: the built-in middleware, in order, in one list.

0. tracing     - outermost, so its `process` span covers the whole chain and is current
   for everything below (left out without OpenTelemetry and a tracer provider);
   measure     - only for a worker given `Metrics`: next, so the handler's time
   covers the whole chain;
1. correlation - outermost otherwise, so every log line below carries the message's ids;
2. idempotency - a duplicate returns its recorded outcome before anything else runs,
   and a failed run's claim is released whatever failed below;
3. retry       - turns a failure into a backoff retry or a dead letter;
4. breaker     - inside retry, so it sees the raw failures it counts; an open circuit
   postpones, which retry lets through;
5. timeout     - innermost of the built-ins: the budget is the handler's alone;
6. the app's own middleware, right around the handler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mailbag.broker import RetryPolicy
from mailbag.broker.breaker import BreakerPolicy
from mailbag.broker.clock import Clock, RealClock
from mailbag.workers.metrics import Metrics
from mailbag.workers.middleware import Middleware
from mailbag.workers.middleware.breaker import Breakers
from mailbag.workers.middleware.correlation import Correlation
from mailbag.workers.middleware.idempotency import Idempotency
from mailbag.workers.middleware.metrics import Measure
from mailbag.workers.middleware.retry import Retry
from mailbag.workers.middleware.timeout import Timeout
from mailbag.workers.middleware.tracing import Tracing
from mailbag.workers.settings import WorkerSettings
from mailbag.workers.stores import IdempotencyStore


def default_chain(
    settings: WorkerSettings,
    store: IdempotencyStore,
    queue_policies: Mapping[str, RetryPolicy],
    breakers: Mapping[str, BreakerPolicy],
    own: Sequence[Middleware] = (),
    metrics: Metrics | None = None,
    clock: Clock | None = None,
) -> list[Middleware]:
    """`clock` times circuit resets and handler budgets (default: the real one)."""
    clock = clock or RealClock()
    return [
        Tracing(),
        *([Measure(metrics)] if metrics is not None else []),
        Correlation(),
        Idempotency(store, ttl=settings.idempotency_ttl, lease=settings.idempotency_lease),
        Retry(queue_policies, jitter=None if settings.retry_jitter else (lambda ceiling: ceiling)),
        Breakers(BreakerPolicy(settings.breaker_failures, settings.breaker_reset_after), breakers, clock.now),
        Timeout(settings.handler_timeout, clock),
        *own,
    ]
