"""A circuit breaker: after repeated broker faults, fail at once instead of waiting on
a broker that is down, and let one trial call through now and then to find out when it
is back."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BreakerSettings:
    """Open after `failure_threshold` consecutive faults; stay open for `reset_timeout`
    seconds, then let one trial call through (half-open): success closes the circuit,
    a fault opens it again."""

    failure_threshold: int = 5
    reset_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {self.failure_threshold}")
        if self.reset_timeout <= 0:
            raise ValueError(f"reset_timeout must be > 0, got {self.reset_timeout}")


class CircuitBreaker:
    """States: closed (calls pass), open (calls refused until `reset_timeout` is over),
    half-open (one trial call passes; the others are refused until it settles).
    Not thread-safe: share it between tasks of one event loop."""

    def __init__(self, settings: BreakerSettings = BreakerSettings(), clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
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
        return "half-open" if self.retry_after() == 0 else "open"

    def retry_after(self) -> float:
        """Seconds until a call may pass; 0 when one may pass now."""
        if self._opened_at is None:
            return 0.0
        left = self._opened_at + self.settings.reset_timeout - self._clock()
        if left > 0:
            return left
        return self.settings.reset_timeout if self._trial_running else 0.0

    def allow(self) -> bool:
        """Whether a call may go ahead now; in half-open state this admits the one trial."""
        if self.retry_after() > 0:
            return False
        if self._opened_at is not None:
            self._trial_running = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def abandoned(self) -> None:
        """The call was cancelled before it told anything about the broker."""
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.settings.failure_threshold:
            self._opened_at = self._clock()
        self._trial_running = False
