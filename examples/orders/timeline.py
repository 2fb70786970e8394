"""What happened in the order flow, in order: the demo prints it, tests read it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Timeline:
    """Entries of (seconds since start, service, order id, what). `all_told` is set
    once `expected` customers have been told how their order ended. `on_line` gets each
    entry as a printable line the moment it is recorded (the demo streams them)."""

    expected: int = 0
    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str, str, str]] = field(default_factory=list)
    told: set[str] = field(default_factory=set)
    all_told: asyncio.Event = field(default_factory=asyncio.Event)
    on_line: Callable[[str], None] | None = None

    def record(self, service: str, order_id: str, what: str) -> None:
        entry = (time.monotonic() - self.started, service, order_id, what)
        self.entries.append(entry)
        if self.on_line is not None:
            self.on_line(_line(*entry))

    def customer_told(self, order_id: str) -> None:
        self.told.add(order_id)
        if self.expected and len(self.told) >= self.expected:
            self.all_told.set()

    def lines(self) -> list[str]:
        return [_line(*entry) for entry in self.entries]


def _line(at: float, service: str, order_id: str, what: str) -> str:
    return f"{at * 1000:8.1f} ms  {service:<12} {order_id:<10} {what}"
