"""Circuit breaker per named dependency (`@app.handler(..., breaker="payments")`).

Closed: calls go through; `failures` consecutive retryable failures open the circuit.
Open: for `reset_after` seconds no handler of that dependency is called; each message
is postponed (put back for the rest of the open time without using up an attempt, see
`workers.attempts`), so an outage does not walk every message to the DLQ.
Half-open: one trial call; success closes the circuit, failure opens it again.

The state is per worker process: each worker finds out about an outage on its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from workers.context import Context
from workers.errors import Postpone, Reject, RetryLater
from workers.middleware import Call

log = logging.getLogger("mailbag.worker")


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError(f"breaker failures must be >= 1, got {self.failures}")
        if self.reset_after <= 0:
            raise ValueError(f"breaker reset_after must be > 0, got {self.reset_after}")


class Circuit:
    """One dependency's state. `clock` is monotonic seconds."""

    def __init__(self, name: str, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self.name = name
        self.policy = policy
        self.clock = clock
        self.failures = 0
        self.open_until: float | None = None
        self.trial_running = False

    @property
    def state(self) -> str:
        if self.open_until is None:
            return "closed"
        return "open" if self.clock() < self.open_until else "half-open"

    def admit(self) -> float | None:
        """None when a call may go ahead, else how long the message should wait."""
        state = self.state
        if state == "closed":
            return None
        if state == "open":
            return self.open_until - self.clock()  # type: ignore[operator]
        if self.trial_running:
            return self.policy.reset_after
        self.trial_running = True
        return None

    def succeeded(self) -> None:
        if self.open_until is not None:
            log.info("circuit %s closed", self.name)
        self.failures, self.open_until, self.trial_running = 0, None, False

    def failed(self) -> None:
        self.failures += 1
        if self.trial_running or self.failures >= self.policy.failures:
            if self.open_until is None or self.trial_running:
                log.warning("circuit %s open for %gs after %d failure(s)", self.name, self.policy.reset_after, self.failures)
            self.open_until = self.clock() + self.policy.reset_after
            self.trial_running = False


class CircuitBreaker:
    """The circuits of one worker, created on first use with the named policy or
    `default`."""

    def __init__(
        self,
        default: BreakerPolicy | None = None,
        policies: Mapping[str, BreakerPolicy] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default or BreakerPolicy()
        self.policies = dict(policies or {})
        self.clock = clock
        self.circuits: dict[str, Circuit] = {}

    def circuit(self, name: str) -> Circuit:
        circuit = self.circuits.get(name)
        if circuit is None:
            policy = self.policies.get(name, self.default)
            circuit = self.circuits[name] = Circuit(name, policy, self.clock)
        return circuit

    def applies_to(self, handler: Any) -> bool:
        return handler.breaker is not None

    async def __call__(self, ctx: Context, call_next: Call) -> Any:
        circuit = self.circuit(ctx.handler.breaker)
        wait = circuit.admit()
        if wait is not None:
            raise Postpone(wait, f"circuit {circuit.name} is open")
        try:
            result = await call_next(ctx)
        except (Reject, RetryLater, Postpone):
            raise  # an outcome the handler chose: says nothing about the dependency
        except Exception as exc:
            if isinstance(exc, ctx.handler.retry_on):
                circuit.failed()
            raise
        finally:
            circuit.trial_running = False
        circuit.succeeded()
        return result
