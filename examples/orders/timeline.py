"""What happened in the order flow, in order: the demo prints it, tests read it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class Timeline:
    """Entries of (seconds since start, service, order id, what). `all_told` is set
    once `expected` customers have been told how their order ended."""

    expected: int = 0
    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str, str, str]] = field(default_factory=list)
    told: set[str] = field(default_factory=set)
    all_told: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, service: str, order_id: str, what: str) -> None:
        self.entries.append((time.monotonic() - self.started, service, order_id, what))

    def customer_told(self, order_id: str) -> None:
        self.told.add(order_id)
        if self.expected and len(self.told) >= self.expected:
            self.all_told.set()

    def lines(self) -> list[str]:
        return [
            f"{at * 1000:8.1f} ms  {service:<12} {order_id:<10} {what}" for at, service, order_id, what in self.entries
        ]
