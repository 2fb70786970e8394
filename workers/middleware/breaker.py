"""Circuit breaker per named dependency (`@app.handler(..., breaker="payments")`).

Closed: calls go through; `failures` consecutive retryable failures open the circuit.
Open: for `reset_after` seconds no handler of that dependency is called; each message
is postponed (put back for the rest of the open time without using up an attempt, see
`Delivery.postpone`), so an outage does not walk every message to the DLQ.
Half-open: one trial call; success closes the circuit, failure opens it again.

The state is per worker process: each worker finds out about an outage on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from mailbag.broker.breaker import BreakerPolicy, CircuitBreaker
from mailbag.workers.context import Context
from mailbag.workers.errors import Postpone, Reject, RetryLater
from mailbag.workers.middleware import Call


class Breakers:
    """The breaker middleware: one `CircuitBreaker` per dependency name, created on
    first use with the named policy or `default`."""

    def __init__(
        self,
        default: BreakerPolicy | None = None,
        policies: Mapping[str, BreakerPolicy] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default or BreakerPolicy()
        self.policies = dict(policies or {})
        self.clock = clock
        self.circuits: dict[str, CircuitBreaker] = {}

    def circuit(self, name: str) -> CircuitBreaker:
        circuit = self.circuits.get(name)
        if circuit is None:
            policy = self.policies.get(name, self.default)
            circuit = self.circuits[name] = CircuitBreaker(policy, self.clock, name)
        return circuit

    def applies_to(self, handler: Any) -> bool:
        return handler.breaker is not None

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        circuit = self.circuit(ctx.handler.breaker)
        if not circuit.allow():
            raise Postpone(circuit.retry_after(), f"circuit {circuit.name} is open")
        try:
            result = await call_next(ctx)
        except (Reject, RetryLater, Postpone):
            circuit.abandoned()  # an outcome the handler chose: says nothing about the dependency
            raise
        except Exception as exc:
            if isinstance(exc, ctx.handler.retry_on):
                circuit.failed()
            else:
                circuit.abandoned()
            raise
        except BaseException:
            circuit.abandoned()
            raise
        circuit.succeeded()
        return result
