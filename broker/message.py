"""The message envelope and the delivery that carries it to a consumer."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from mailbag.broker.errors import AlreadySettled

HeaderValue = str | int | float | bool


def new_message_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Message:
    """One event as it travels: the body is opaque bytes, everything else maps onto
    native broker fields (AMQP basic properties, SNS/SQS message attributes), so plain
    clients in any language can read what we publish and publish what we consume."""

    topic: str
    body: bytes
    id: str = field(default_factory=new_message_id)
    content_type: str = "application/json"
    type: str | None = None
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)
    correlation_id: str | None = None
    causation_id: str | None = None
    ordering_key: str | None = None
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise TypeError(f"Message.body must be bytes, not {type(self.body).__name__}")
        if not self.topic:
            raise ValueError("Message.topic must not be empty")
        object.__setattr__(self, "body", bytes(self.body))
        object.__setattr__(self, "headers", dict(self.headers))

    def evolve(self, **changes: Any) -> Message:
        return replace(self, **changes)


class Delivery:
    """A received message, the queue it came from and its attempt number: 1 on first
    delivery, counting handler runs (a `postpone` does not count). It must be settled
    exactly once, by `ack`, `retry`, `postpone` or `dead_letter`; a second settlement
    raises `AlreadySettled`. An unsettled delivery goes back to the queue when its
    consumer closes or its process dies (at-least-once).

    A settlement the broker does not take (the dead-letter queue is gone, the broker
    refused a publish, the channel closed) raises; the delivery is then unsettled and
    `release()` gives it back to the queue at once, so nothing is stranded.

    Adapters subclass it and implement `_ack`, `_retry`, `_postpone`, `_dead_letter` and
    `_release`."""

    __slots__ = ("_failed", "_settled", "attempt", "message", "queue")

    def __init__(self, message: Message, queue: str, attempt: int) -> None:
        self.message = message
        self.queue = queue
        self.attempt = attempt
        self._settled: str | None = None
        self._failed = False

    @property
    def settled(self) -> str | None:
        """How the delivery was settled ('ack', 'retry', 'postpone', 'dead_letter',
        'release'), or None."""
        return self._settled

    def _claim(self, how: str) -> None:
        if self._settled is not None and not (how == "release" and self._failed):
            raise AlreadySettled(f"message {self.message.id} on {self.queue!r} was already settled by {self._settled}")
        self._settled = how

    async def _settle(self, how: str, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        self._claim(how)
        try:
            await work(*args)
        except Exception:
            self._failed = True
            raise

    async def ack(self) -> None:
        """The message was handled: remove it from the queue."""
        await self._settle("ack", self._ack)

    async def retry(self, delay: float = 0.0) -> None:
        """Deliver the message again after `delay` seconds with attempt + 1. Past the
        queue's max attempts the broker dead-letters it instead."""
        if delay < 0:
            raise ValueError(f"retry delay must be >= 0, got {delay}")
        await self._settle("retry", self._retry, delay)

    async def postpone(self, delay: float = 0.0) -> None:
        """Deliver the message again after `delay` seconds with the same attempt
        number: this try never ran its handler (a circuit was open, another run held
        its idempotency key). On an ordered queue the rest of its key waits."""
        if delay < 0:
            raise ValueError(f"postpone delay must be >= 0, got {delay}")
        await self._settle("postpone", self._postpone, delay)

    async def dead_letter(self, reason: str, error: BaseException | None = None) -> None:
        """Move the message to the queue's dead-letter queue, body and headers intact,
        with `reason` (and the error's type, text and traceback) stamped on it."""
        await self._settle("dead_letter", self._dead_letter, reason, error)

    async def release(self, delay: float = 0.0) -> None:
        """Give the message back to the queue, unsettled, visible again after `delay`
        seconds (at once by default), and free its prefetch slot: for a delivery whose
        settlement raised (a message that could not be dead-lettered comes back after a
        growing delay, `mailbag.broker.backoff`). It comes back as a new receive
        (attempt + 1 where the broker counts receives). A no-op for a delivery that is
        back already (its consumer closed)."""
        if delay < 0:
            raise ValueError(f"release delay must be >= 0, got {delay}")
        self._claim("release")
        await self._release(delay)

    async def _ack(self) -> None:
        raise NotImplementedError

    async def _retry(self, delay: float) -> None:
        raise NotImplementedError

    async def _postpone(self, delay: float) -> None:
        raise NotImplementedError

    async def _dead_letter(self, reason: str, error: BaseException | None) -> None:
        raise NotImplementedError

    async def _release(self, delay: float) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.message.id} queue={self.queue!r} "
            f"attempt={self.attempt} settled={self._settled}>"
        )
