"""Topology: topics, queues, subscriptions, retry policy, dead-letter queue, ordering.

Declared once, in Python or TOML; each adapter maps it onto its broker's native
objects. Everything is validated at construction so a wrong setting fails at start.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mailbag.broker.errors import TopologyError, UnknownQueue

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TopologyError(f"invalid {kind} name {name!r}: use letters, digits, '.', '_' or '-' (1-200 chars)")
    return name


@dataclass(frozen=True)
class RetryPolicy:
    """How often a failing message is tried and how long it waits between tries:
    exponential backoff from `initial_delay`, times `multiplier`, capped at `max_delay`."""

    max_attempts: int = 5
    initial_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise TopologyError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0 or self.max_delay < 0:
            raise TopologyError("retry delays must be >= 0")
        if self.multiplier < 1:
            raise TopologyError(f"multiplier must be >= 1, got {self.multiplier}")

    def delay(self, attempt: int) -> float:
        """Delay before the try that follows failed try number `attempt` (1-based)."""
        return min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))

    @property
    def delays(self) -> tuple[float, ...]:
        """The distinct delays this policy can ask for, shortest first."""
        return tuple(sorted({self.delay(a) for a in range(1, self.max_attempts)}))


@dataclass(frozen=True)
class Subscription:
    """Route every message published on `topic` to the queue, or only those whose
    headers match `filter` (each key must equal one of the listed values)."""

    topic: str
    filter: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        _check_name("topic", self.topic)
        if self.filter is not None:
            normalized = {}
            for key, values in dict(self.filter).items():
                values = (values,) if isinstance(values, str) else tuple(values)
                if not values or not all(isinstance(v, str) for v in values):
                    raise TopologyError(f"filter on {key!r} needs one or more string values")
                normalized[key] = values
            object.__setattr__(self, "filter", normalized)

    def matches(self, headers: Mapping[str, Any]) -> bool:
        if not self.filter:
            return True
        return all(k in headers and str(headers[k]) in values for k, values in self.filter.items())


@dataclass(frozen=True)
class Queue:
    """A durable queue fed by its subscriptions. `ordered` asks for order per ordering
    key (RabbitMQ single active consumer, SQS FIFO); `kind` picks the RabbitMQ queue type.
    Every queue has a dead-letter queue, `<name>.dlq` unless named."""

    name: str
    subscriptions: tuple[Subscription, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    ordered: bool = False
    kind: Literal["classic", "quorum"] = "classic"
    dead_letter_queue: str = ""

    def __post_init__(self) -> None:
        _check_name("queue", self.name)
        subs = tuple(Subscription(s) if isinstance(s, str) else s for s in self.subscriptions)
        object.__setattr__(self, "subscriptions", subs)
        if self.kind not in ("classic", "quorum"):
            raise TopologyError(f"queue {self.name!r}: kind must be 'classic' or 'quorum', got {self.kind!r}")
        if not self.dead_letter_queue:
            object.__setattr__(self, "dead_letter_queue", f"{self.name}.dlq")
        _check_name("queue", self.dead_letter_queue)

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(s.topic for s in self.subscriptions)


@dataclass(frozen=True)
class Topology:
    """Topics and the queues subscribed to them. Topics named only by a subscription
    are declared too."""

    queues: tuple[Queue, ...] = ()
    topics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        queues = tuple(self.queues)
        seen: dict[str, Queue] = {}
        for q in queues:
            if q.name in seen and seen[q.name] != q:
                raise TopologyError(f"queue {q.name!r} is declared twice with different settings")
            seen[q.name] = q
        dlqs = {q.dead_letter_queue for q in queues}
        clash = dlqs & set(seen)
        if clash:
            raise TopologyError(f"{sorted(clash)[0]!r} is both a queue and a dead-letter queue")
        topics = list(dict.fromkeys(_check_name("topic", t) for t in self.topics))
        for q in queues:
            for t in q.topics:
                if t not in topics:
                    topics.append(t)
        object.__setattr__(self, "queues", tuple(seen.values()))
        object.__setattr__(self, "topics", tuple(topics))

    def queue(self, name: str) -> Queue:
        for q in self.queues:
            if q.name == name:
                return q
        raise UnknownQueue(f"queue {name!r} is not in the topology")

    def subscribers(self, topic: str) -> tuple[Queue, ...]:
        return tuple(q for q in self.queues if topic in q.topics)

    def merge(self, other: Topology) -> Topology:
        return Topology(queues=self.queues + other.queues, topics=self.topics + other.topics)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Topology:
        """Build from the TOML shape: `topics = [...]` and `[queues.NAME]` tables with
        `subscribe`, `ordered`, `kind`, `dead_letter_queue`, `filter` and `[queues.NAME.retry]`."""
        queues = []
        for name, spec in dict(data.get("queues", {})).items():
            spec = dict(spec)
            unknown = set(spec) - {"subscribe", "ordered", "kind", "dead_letter_queue", "filter", "retry"}
            if unknown:
                raise TopologyError(f"queue {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
            filt = spec.get("filter")
            subs = tuple(Subscription(t, filt) for t in spec.get("subscribe", ()))
            try:
                retry = RetryPolicy(**spec.get("retry", {}))
            except TypeError as exc:
                raise TopologyError(f"queue {name!r}: bad retry settings ({exc})") from None
            queues.append(
                Queue(
                    name,
                    subs,
                    retry=retry,
                    ordered=bool(spec.get("ordered", False)),
                    kind=spec.get("kind", "classic"),
                    dead_letter_queue=spec.get("dead_letter_queue", ""),
                )
            )
        return cls(queues=tuple(queues), topics=tuple(data.get("topics", ())))

    @classmethod
    def from_toml(cls, path: str | Path) -> Topology:
        with open(path, "rb") as fh:
            return cls.from_dict(tomllib.load(fh))
