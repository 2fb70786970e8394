"""How big and how patient a comparison run is. Validated at construction, so a bad
value fails before any broker is touched."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from mailbag.harness.timing import Timing


@dataclass(frozen=True)
class Settings:
    #: messages published per scenario (the dead-letter scenario uses fewer, see below)
    messages: int = 200
    #: ordering keys the messages are spread over, round robin
    keys: int = 4
    #: competing consumers where a scenario runs several
    consumers: int = 4
    #: unsettled deliveries per consumer
    prefetch: int = 10
    #: messages per publish call
    batch: int = 20
    #: the redelivery scenario retries every n-th message once
    retry_every: int = 25
    #: the delay asked for on retry, in seconds (SQS honours whole seconds only)
    retry_delay: float = 1.0
    #: the dead-letter scenario's policy: attempts before the DLQ
    max_attempts: int = 3
    #: queues subscribed to the fan-out topic
    fan_out_queues: int = 3
    #: deliveries the crashed consumer holds unsettled when it dies (at most `messages`)
    crash_hold: int = 10
    #: upper bound of the simulated handling time in the ordering scenario, seconds
    jitter: float = 0.002
    #: once every message arrived, how long to keep listening for late duplicates; None:
    #: the broker's redelivery time (`Timing.listen`), so a duplicate that an expired SQS
    #: visibility timeout brings back is still counted
    grace: float | None = None
    #: give up on missing messages after this long without any delivery; None: the
    #: longest the broker may take to hand a message out (`Timing.patience`)
    idle_timeout: float | None = None
    #: how much later than asked a redelivery may come before it is reported late
    delay_tolerance: float = 1.0
    #: seeds the simulated handling times, so two runs do the same work
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "seed" and value is not None and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")
        for name in (
            "messages",
            "keys",
            "consumers",
            "prefetch",
            "batch",
            "retry_every",
            "max_attempts",
            "fan_out_queues",
            "crash_hold",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def timed(self, timing: Timing) -> Settings:
        """These settings with the patience and listening window the broker's `timing`
        gives, where they are not set."""
        return replace(
            self,
            grace=timing.listen if self.grace is None else self.grace,
            idle_timeout=timing.patience if self.idle_timeout is None else self.idle_timeout,
        )

    @property
    def listen(self) -> float:
        """Seconds to keep listening for late duplicates once every message arrived."""
        return self._resolved(self.grace, "grace")

    @property
    def patience(self) -> float:
        """Seconds without any delivery after which what is missing is lost."""
        return self._resolved(self.idle_timeout, "idle_timeout")

    @staticmethod
    def _resolved(value: float | None, name: str) -> float:
        if value is None:
            raise ValueError(f"{name} follows the broker's timing: use Settings.timed(target.timing)")
        return value

    @property
    def dead_letter_messages(self) -> int:
        """Each of these waits out every retry delay, one after another on an ordered
        queue, so the scenario sends one per key, or a fiftieth of `messages` if more."""
        return min(self.messages, max(self.keys, self.messages // 50))
