"""What a handler sees of its delivery, and how it publishes follow-up events.

A follow-up's id is derived from the incoming message's id, the handler and the
follow-up's position in the run (the first, the second, ...): a retried or redelivered
handler that publishes the same events publishes them under the same ids, so an
idempotent consumer downstream drops the duplicates."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, TypedDict, Unpack

from mailbag.broker import Broker, Delivery, Message, tracing
from mailbag.broker.message import HeaderValue
from mailbag.broker.outgoing import TopicModels


class FollowUpFields(TypedDict, total=False):
    """What a handler sets on a follow-up: the ordering `key`, `headers`, and `stamp`
    for mailbag's own headers (a saga's reply)."""

    key: str | None
    headers: Mapping[str, Any] | None
    stamp: Mapping[str, HeaderValue] | None


class Context:
    """The delivery behind a handler call. `publish` carries the correlation id over,
    records this message as the cause and (with tracing on) continues its trace, so a
    flow can be followed across services. A follow-up is built like any published
    message: `x-mailbag-*` headers are refused (`ReservedHeader`), and a payload for a
    topic with a model in `models` must validate (`PayloadRejected`)."""

    __slots__ = ("_broker", "_follow_ups", "_models", "delivery", "extras", "handler", "payload")

    def __init__(
        self, delivery: Delivery, broker: Broker, handler: Any, payload: Any = None, models: TopicModels | None = None
    ) -> None:
        self.delivery = delivery
        self.payload = payload
        self.handler = handler
        self._broker = broker
        self._models = models or TopicModels()
        self._follow_ups = 0
        #: a place for middleware to leave things for handlers (e.g. a transaction)
        self.extras: dict[str, Any] = {}

    @property
    def message(self) -> Message:
        return self.delivery.message

    @property
    def message_id(self) -> str:
        return self.delivery.message.id

    @property
    def correlation_id(self) -> str:
        return self.delivery.message.correlation_id or self.delivery.message.id

    @property
    def attempt(self) -> int:
        """1 on the first try; postponements (open circuit, running duplicate) do not count."""
        return self.delivery.attempt

    @property
    def transaction(self) -> Any:
        """The database connection whose open transaction also records this message as
        handled (handlers registered with `transactional=True`); None otherwise."""
        return self.extras.get("transaction")

    @property
    def queue(self) -> str:
        return self.delivery.queue

    @property
    def broker(self) -> Broker:
        """The broker the delivery came from (and `publish` sends through)."""
        return self._broker

    def follow_up(self, topic: str, payload: Any, **fields: Unpack[FollowUpFields]) -> Message:
        """The next message `publish` would send: correlated with, and caused by, this
        one, with the id of this position in the run (see the module docstring)."""
        message = self._models.message(
            topic,
            payload,
            **fields,
            message_id=follow_up_id(self.message_id, f"{self.queue}/{self.handler.name}", self._follow_ups + 1),
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            max_size=self._broker.max_message_size,
        )
        self._follow_ups += 1
        return message

    async def publish(self, topic: str, payload: Any, **fields: Unpack[FollowUpFields]) -> str:
        """Publish a follow-up (see `follow_up`); returns its id."""
        message = self.follow_up(topic, payload, **fields)
        with tracing.publishing(self._broker, topic, [message]) as traced:
            await self._broker.publish(topic, traced)
        return message.id


#: the namespace of follow-up ids (UUID version 5 of incoming id, handler, position)
FOLLOW_UPS = uuid.UUID("6f1b7d2e-4a53-5c8e-9b0f-3d2a1c4e5f60")


def follow_up_id(message_id: str, handler: str, position: int) -> str:
    """The id of the `position`-th follow-up (from 1) a handler publishes for a message."""
    return uuid.uuid5(FOLLOW_UPS, f"{message_id}\x00{handler}\x00{position}").hex
