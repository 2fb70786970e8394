"""`Message` <-> AMQP message (basic properties), the only place that knows how our envelope sits in AMQP.

Fields map onto basic properties (`message_id`, `correlation_id`, `type`,
`content_type`, `timestamp`, `headers`) so a plain AMQP client reads what we publish
and publishes what we consume. What AMQP has no property for travels in
`x-mailbag-*` headers, which are taken back out of `Message.headers` on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from aio_pika.message import encode_expiration
from pamqp.commands import Basic

from mailbag.broker import headers as h
from mailbag.broker.message import HeaderValue, Message, new_message_id, utcnow

#: the topic a message was published on (the delivery's exchange is lost on retry and send)
TOPIC = h.PREFIX + "topic"
#: the attempt number of the copy a retry republishes (the broker's counters restart with it)
ATTEMPT = h.PREFIX + "attempt"
CAUSATION_ID = h.PREFIX + "causation-id"
ORDERING_KEY = h.PREFIX + "ordering-key"

PERSISTENT = int(DeliveryMode.PERSISTENT)

_ENVELOPE = (TOPIC, ATTEMPT, CAUSATION_ID, ORDERING_KEY)

#: bookkeeping the broker adds on dead-lettering and quorum redelivery; attempts are
#: counted from them, and they are not copied when a message is republished
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-")

#: x-death reasons that mean the broker gave up on the message itself
_LIMIT_REASONS = {"delivery_limit"}


class Outgoing(NamedTuple):
    """A message ready for `basic.publish`: the body and its basic properties."""

    body: bytes
    properties: Basic.Properties

    @property
    def id(self) -> str:
        return self.properties.message_id or ""


def to_amqp(message: Message, *, attempt: int | None = None) -> Outgoing:
    """A persistent AMQP message carrying every field of `message`."""
    headers: dict[str, Any] = dict(message.headers)
    headers[TOPIC] = message.topic
    if message.causation_id is not None:
        headers[CAUSATION_ID] = message.causation_id
    if message.ordering_key is not None:
        headers[ORDERING_KEY] = message.ordering_key
    if attempt is not None:
        headers[ATTEMPT] = attempt
    return Outgoing(
        message.body,
        Basic.Properties(
            content_type=message.content_type,
            headers=headers,
            delivery_mode=PERSISTENT,
            correlation_id=message.correlation_id,
            message_id=message.id,
            timestamp=message.created_at,
            message_type=message.type,
        ),
    )


def republished(raw: AbstractIncomingMessage, extra_headers: Mapping[str, Any]) -> Outgoing:
    """A persistent copy of a received message with every property kept (a plain
    client's `reply_to` or `app_id` survive a retry), broker bookkeeping dropped and
    `extra_headers` added. `user_id` is dropped: the broker checks it against the
    republishing connection's login."""
    headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith(_BROKER_HEADERS)}
    headers.update(extra_headers)
    return Outgoing(
        raw.body,
        Basic.Properties(
            content_type=raw.content_type,
            content_encoding=raw.content_encoding,
            headers=headers,
            delivery_mode=PERSISTENT,
            priority=raw.priority,
            correlation_id=raw.correlation_id,
            reply_to=raw.reply_to,
            expiration=encode_expiration(raw.expiration),
            message_id=raw.message_id or new_message_id(),
            timestamp=raw.timestamp,
            message_type=raw.type,
            app_id=raw.app_id,
        ),
    )


def from_amqp(raw: AbstractIncomingMessage) -> Message:
    """The `Message` a received AMQP message carries. The topic is our header, else the
    exchange it was published to, else its routing key (a plain client sending
    straight to a queue). A message from the broker's own dead-lettering (a quorum
    queue's delivery limit) gets the dead-letter headers our own dead letters carry."""
    raw_headers = raw.headers or {}
    headers: dict[str, HeaderValue] = {}
    for key, value in raw_headers.items():
        if key in _ENVELOPE or key.startswith(_BROKER_HEADERS):
            continue
        headers[key] = _header_value(value)
    if h.DEAD_REASON not in headers:
        headers.update(_broker_dead_letter_stamp(raw_headers))
    topic = raw_headers.get(TOPIC) or raw.exchange or raw.routing_key or "unknown"
    created_at = raw.timestamp
    if created_at is None:
        created_at = utcnow()
    elif created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return Message(
        topic=_text(topic),
        body=raw.body,
        id=raw.message_id or new_message_id(),
        content_type=raw.content_type or "application/octet-stream",
        type=raw.type,
        headers=headers,
        correlation_id=raw.correlation_id,
        causation_id=_optional_text(raw_headers.get(CAUSATION_ID)),
        ordering_key=_optional_text(raw_headers.get(ORDERING_KEY)),
        created_at=created_at,
    )


def attempt_of(raw: AbstractIncomingMessage) -> int:
    """The attempt number of this delivery, 1 on the first. Our retry header counts
    the republished tries; on top of it a quorum queue's `x-delivery-count` counts the
    returns (crashes, closed channels) exactly, while a classic queue only says
    `redelivered`, so there a returned message counts as one more try however many
    times it came back."""
    headers: dict[str, Any] = dict(raw.headers or {})
    base = int(headers.get(ATTEMPT, 1))
    returns = headers.get("x-delivery-count")
    if returns is not None:
        return base + int(returns)
    return base + (1 if raw.redelivered else 0)


def _broker_dead_letter_stamp(raw_headers: Mapping[str, Any]) -> dict[str, HeaderValue]:
    deaths = raw_headers.get("x-death") or []
    last = deaths[0] if deaths else None  # RabbitMQ puts the most recent death first
    if not last or last.get("reason") not in _LIMIT_REASONS:
        return {}
    queue = _text(last.get("queue", ""))
    stamp: dict[str, HeaderValue] = {
        h.DEAD_REASON: h.DELIVERY_LIMIT_EXCEEDED,
        h.ORIGIN_QUEUE: queue,
    }
    topic = raw_headers.get(TOPIC)
    if topic:
        stamp[h.ORIGIN_TOPIC] = _text(topic)
    if isinstance(last.get("time"), datetime):
        stamp[h.FAILED_AT] = last["time"].isoformat()
    return stamp


def _header_value(value: Any) -> HeaderValue:
    """AMQP field values as our scalar header values: text for bytes, timestamps and
    anything nested, floats for decimals."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)
