"""The ledger every scenario keeps: what was published, every delivery that arrived,
and which deliveries the scenario was done with. Loss and duplicates are read off it,
the same way in every scenario."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from mailbag.broker import Delivery, Message


class Meter(Protocol):
    """Where progress goes (a progress bar, or nowhere)."""

    def expect(self, total: int) -> None: ...

    def tick(self, n: int = 1) -> None: ...


class NoMeter:
    def expect(self, total: int) -> None:
        pass

    def tick(self, n: int = 1) -> None:
        pass


@dataclass(frozen=True)
class Sent:
    id: str
    key: str | None
    seq: int
    at: float


@dataclass(frozen=True)
class Arrival:
    id: str
    queue: str
    attempt: int
    at: float
    consumer: int


class Ledger:
    """Times are `time.monotonic()` seconds. A message is expected once for each
    `sent` call that names it; the scenario calls `handled` when it is done with a
    delivery (acked it, or read it from where it should end up)."""

    def __init__(self, meter: Meter | None = None) -> None:
        self.meter = meter or NoMeter()
        self.sent: dict[str, Sent] = {}
        self.arrivals: list[Arrival] = []
        self.handled: list[Arrival] = []
        self._handled_count: Counter[str] = Counter()
        self._retries: Counter[str] = Counter()
        self.last_change = time.monotonic()

    def publishing(self, messages: Iterable[Message]) -> None:
        """Record messages about to be published, in publish order."""
        now = time.monotonic()
        for m in messages:
            self.sent[m.id] = Sent(m.id, m.ordering_key, len(self.sent), now)
        self.mark(now)

    def arrived(self, delivery: Delivery, consumer: int = 0) -> Arrival:
        arrival = Arrival(delivery.message.id, delivery.queue, delivery.attempt, time.monotonic(), consumer)
        self.arrivals.append(arrival)
        if self._retries[arrival.id]:
            self._retries[arrival.id] -= 1
        self.mark(arrival.at)
        return arrival

    def retrying(self, arrival: Arrival, delay: float) -> None:
        """The scenario handed `arrival` back to come again after `delay` seconds: it is
        out (`retries_out`) until it arrives again, and patience counts from when it is
        due, so nothing is judged lost while a retry is on its way, and no queue is
        removed while one waits in the broker (a retry whose queue is gone is orphaned)."""
        self._retries[arrival.id] += 1
        self.mark(time.monotonic() + delay)

    def done(self, arrival: Arrival) -> None:
        """The scenario is done with this delivery; a second one for the same message
        is a duplicate."""
        self.handled.append(arrival)
        self._handled_count[arrival.id] += 1
        self.mark(time.monotonic())
        if self._handled_count[arrival.id] == 1:
            self.meter.tick()

    def mark(self, at: float) -> None:
        """Count quiet time (the patience) from `at` at the earliest: something is on its
        way from then (a retry due, a killed consumer's messages coming back)."""
        self.last_change = max(self.last_change, at)

    @property
    def complete(self) -> bool:
        return all(self._handled_count[i] for i in self.sent)

    @property
    def retries_out(self) -> int:
        """Retries asked for that have not arrived again yet."""
        return sum(self._retries.values())

    @property
    def lost(self) -> list[str]:
        return [i for i in self.sent if not self._handled_count[i]]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for i, n in self._handled_count.items() if i in self.sent)

    @property
    def strays(self) -> int:
        """Deliveries of messages this run never published."""
        return sum(n for i, n in self._handled_count.items() if i not in self.sent)

    def first_handled(self) -> list[Arrival]:
        """Each message's first handling, in the order they happened."""
        seen: set[str] = set()
        first = []
        for a in self.handled:
            if a.id not in seen:
                seen.add(a.id)
                first.append(a)
        return first
