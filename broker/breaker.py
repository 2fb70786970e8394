"""The one circuit-breaker state machine, shared by publishing (broker faults) and the
worker's breaker middleware (faults of a handler's named dependency). It lives in the
lowest layer so that both can use it while dependencies keep pointing one way.

Closed: calls pass; `failures` consecutive faults open the circuit. Open: calls are
refused for `reset_after` seconds. Half-open: one trial call passes (the others are
refused until it settles); its success closes the circuit, its fault opens it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from mailbag.broker.errors import ConfigurationError

log = logging.getLogger("mailbag.breaker")


@dataclass(frozen=True)
class BreakerPolicy:
    """Open after `failures` consecutive faults; stay open `reset_after` seconds."""

    failures: int = 5
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ConfigurationError(f"breaker failures must be >= 1, got {self.failures}")
        if self.reset_after <= 0:
            raise ConfigurationError(f"breaker reset_after must be > 0, got {self.reset_after}")


class CircuitBreaker:
    """One circuit. Not thread-safe: share it between tasks of one event loop. `clock`
    is monotonic seconds; `name` appears in the log lines of state changes."""

    def __init__(
        self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic, name: str = ""
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.name = name
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def failures(self) -> int:
        """Consecutive faults since the last success."""
        return self._failures

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() < self._opened_at + self.policy.reset_after else "half-open"

    def retry_after(self) -> float:
        """Seconds until a call may pass; 0 when one may pass now."""
        if self._opened_at is None:
            return 0.0
        left = self._opened_at + self.policy.reset_after - self._clock()
        if left > 0:
            return left
        return self.policy.reset_after if self._trial_running else 0.0

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open state this admits the one trial."""
        if self.retry_after() > 0:
            return False
        if self._opened_at is not None:
            self._trial_running = True
        return True

    def succeeded(self) -> None:
        if self._opened_at is not None:
            log.info("circuit %s closed", self.name or "")
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def abandoned(self) -> None:
        """The call ended without telling anything about the dependency."""
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.policy.failures:
            if self._opened_at is None or self._trial_running:
                log.warning(
                    "circuit %s open for %gs after %d failure(s)", self.name, self.policy.reset_after, self._failures
                )
            self._opened_at = self._clock()
        self._trial_running = False
