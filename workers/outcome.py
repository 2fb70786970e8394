"""What a handled delivery comes to: one outcome, which the worker's runtime applies in
one place (`Worker._settle`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

OutcomeKind = Literal["ack", "retry", "postpone", "dead_letter"]


@dataclass(frozen=True)
class Outcome:
    """`ack`: handled. `retry`: again after `delay`, one attempt used. `postpone`: again
    after `delay`, no attempt used (the handler never ran). `dead_letter`: to the DLQ
    with `reason` and `error`."""

    kind: OutcomeKind
    delay: float = 0.0
    reason: str = ""
    error: BaseException | None = None
