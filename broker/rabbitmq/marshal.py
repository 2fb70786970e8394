"""`Message` <-> AMQP message (basic properties), the only place that knows how our envelope sits in AMQP.

Fields map onto basic properties (`message_id`, `correlation_id`, `type`,
`content_type`, `timestamp`, `headers`) so a plain AMQP client reads what we publish
and publishes what we consume. What AMQP has no property for travels in
`x-mailbag-*` headers, which are taken back out of `Message.headers` on the way in.

A plain client's message reads the same every time, and on every broker: no content
type is `application/json` (as on SNS/SQS), no message id is a digest of the message
(`derived_id`), no timestamp is the epoch (`UNKNOWN_TIME`), and no topic header is the
exchange it was published to; a retry or dead letter writes all four into its copy.
Float headers keep double precision (`FLOATS`); a header AMQP cannot carry (a 65-bit
integer, an infinite float) is refused before anything is sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from aio_pika.message import encode_expiration
from pamqp import frame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from mailbag.broker import headers as h
from mailbag.broker.codec import JSON
from mailbag.broker.message import HeaderValue, Message
from mailbag.broker.rabbitmq.delays import TARGET

TOPIC, ATTEMPT, CAUSATION_ID, ORDERING_KEY, FLOATS = h.TOPIC, h.ATTEMPT, h.CAUSATION_ID, h.ORDERING_KEY, h.FLOATS
#: the integer range an AMQP field table carries
_INT_RANGE = (-(2**63), 2**63 - 1)

PERSISTENT = int(DeliveryMode.PERSISTENT)

_ENVELOPE = (TOPIC, ATTEMPT, CAUSATION_ID, ORDERING_KEY, TARGET, FLOATS)

#: bookkeeping the broker adds on dead-lettering and quorum redelivery; attempts are
#: counted from them, and they are not copied when a message is republished
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-", TARGET)

#: the created time of a message that came without a timestamp (a plain client's): fixed,
#: so it reads the same every time
UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)

#: x-death reasons that mean the broker gave up on the message itself
_LIMIT_REASONS = {"delivery_limit"}


class Outgoing(NamedTuple):
    """A message ready for `basic.publish`: the body and its basic properties."""

    body: bytes
    properties: Basic.Properties

    @property
    def id(self) -> str:
        return self.properties.message_id or ""


def to_amqp(message: Message, *, extra_headers: Mapping[str, Any] | None = None) -> Outgoing:
    """A persistent AMQP message carrying every field of `message`, and `extra_headers` of ours."""
    headers: dict[str, Any] = {**_carried(message), **(extra_headers or {})}
    headers[TOPIC] = message.topic
    if message.causation_id is not None:
        headers[CAUSATION_ID] = message.causation_id
    if message.ordering_key is not None:
        headers[ORDERING_KEY] = message.ordering_key
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


def header_frame_size(message: Outgoing) -> int:
    """Bytes of the content header frame that carries `message`'s properties, headers
    included: AMQP never splits it, so past the connection's frame_max the broker closes
    the connection (`frame_too_large`)."""
    return len(frame.marshal(ContentHeader(0, len(message.body), message.properties), 1))


def republished(raw: AbstractIncomingMessage, message: Message, extra_headers: Mapping[str, Any]) -> Outgoing:
    """A persistent copy of a received message with every property kept (a plain
    client's `reply_to` or `app_id` survive a retry), broker bookkeeping dropped and
    `extra_headers` added. What `message` (read from it) made of a plain client's
    message stays as it was read: its topic, id and created time. `user_id` is
    dropped: the broker checks it against the republishing connection's login."""
    headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith(_BROKER_HEADERS)}
    headers[TOPIC] = message.topic
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
            message_id=message.id,
            timestamp=message.created_at,
            message_type=raw.type,
            app_id=raw.app_id,
        ),
    )


def from_amqp(raw: AbstractIncomingMessage, *, orphaned: bool = False) -> Message:
    """The `Message` a received AMQP message carries. The topic is our header, else the
    exchange it was published to, else its routing key (a plain client sending
    straight to a queue). A message from the broker's own dead-lettering (a quorum
    queue's delivery limit), or `orphaned` (read from the catch-all of delayed messages
    whose queue is gone), gets the dead-letter headers our own dead letters carry, so
    the dead-letter tools list and replay it."""
    raw_headers = raw.headers or {}
    headers: dict[str, HeaderValue] = {}
    for key, value in raw_headers.items():
        if key in _ENVELOPE or key.startswith(_BROKER_HEADERS):
            continue
        headers[key] = _header_value(value)
    headers.update(_floats(raw_headers.get(FLOATS), headers))
    if h.DEAD_REASON not in headers:
        headers.update(_orphan_stamp(raw_headers) if orphaned else _broker_dead_letter_stamp(raw_headers))
    topic = raw_headers.get(TOPIC) or raw.exchange or raw.routing_key or "unknown"
    created_at = raw.timestamp
    if created_at is None:
        created_at = UNKNOWN_TIME
    elif created_at.tzinfo is None:
        created_at = created_at.replace(tzinfo=UTC)
    return Message(
        topic=_text(topic),
        body=raw.body,
        id=raw.message_id or derived_id(raw),
        content_type=raw.content_type or JSON,
        type=raw.type,
        headers=headers,
        correlation_id=raw.correlation_id,
        causation_id=_optional_text(raw_headers.get(CAUSATION_ID)),
        ordering_key=_optional_text(raw_headers.get(ORDERING_KEY)),
        created_at=created_at,
    )


def attempt_of(raw: AbstractIncomingMessage) -> tuple[int, int]:
    """The attempt number of this delivery (1 on the first), and how many times the
    broker handed it out before (0 on a first delivery). Our retry header counts the
    republished tries; on top of it a quorum queue's `x-delivery-count` counts the
    returns (crashes, closed channels) exactly, while a classic queue only says
    `redelivered`, so there a returned message counts as one more try however many
    times it came back. Raises `ValueError` naming a header that holds no count."""
    headers = raw.headers or {}
    deaths = headers.get("x-death")
    if deaths is not None and not (isinstance(deaths, list) and all(isinstance(d, dict) for d in deaths)):
        raise ValueError(f"header 'x-death' must be a list of tables, got {deaths!r:.80}")
    base = _count(headers, ATTEMPT, 1, minimum=1)
    returns = _count(headers, "x-delivery-count", 0, minimum=0)
    if "x-delivery-count" not in headers:
        returns = 1 if raw.redelivered else 0
    return base + returns, returns


def _count(headers: Mapping[str, Any], name: str, default: int, *, minimum: int) -> int:
    value = headers.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"header {name!r} must be a whole number >= {minimum}, got {value!r}")
    return value


def derived_id(raw: AbstractIncomingMessage) -> str:
    """The id of a message that came without one (a plain client's): a digest of what
    it carries, so every read of it, its retries and its dead letter share one id.
    Two identical messages without ids are one message to mailbag."""
    digest = hashlib.sha256()
    ours = {k: v for k, v in (raw.headers or {}).items() if not k.startswith(_BROKER_HEADERS)}
    for part in (raw.content_type, raw.type, raw.correlation_id, raw.timestamp, sorted(ours.items(), key=str)):
        digest.update(repr(part).encode())
    digest.update(raw.body)
    return "amqp-" + digest.hexdigest()[:32]


def _broker_dead_letter_stamp(raw_headers: Mapping[str, Any]) -> dict[str, HeaderValue]:
    last = _last_death(raw_headers)
    if last is None or last.get("reason") not in _LIMIT_REASONS:
        return {}
    return _stamp(raw_headers, h.DELIVERY_LIMIT_EXCEEDED, _text(last.get("queue", "")), last)


def _orphan_stamp(raw_headers: Mapping[str, Any]) -> dict[str, HeaderValue]:
    """The queue an orphan was for is the one its `TARGET` header names."""
    return _stamp(raw_headers, h.ORPHANED, _text(raw_headers.get(TARGET, "")), _last_death(raw_headers))


def _last_death(raw_headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = raw_headers.get("x-death")
    last = deaths[0] if isinstance(deaths, list) and deaths else None  # the most recent death first
    return last if isinstance(last, Mapping) else None


def _stamp(
    raw_headers: Mapping[str, Any], reason: str, queue: str, death: Mapping[str, Any] | None
) -> dict[str, HeaderValue]:
    stamp: dict[str, HeaderValue] = {h.DEAD_REASON: reason, h.ORIGIN_QUEUE: queue}
    topic = raw_headers.get(TOPIC)
    if topic:
        stamp[h.ORIGIN_TOPIC] = _text(topic)
    if death is not None and isinstance(death.get("time"), datetime):
        stamp[h.FAILED_AT] = death["time"].isoformat()
    return stamp


def _carried(message: Message) -> dict[str, Any]:
    """The message's headers as AMQP carries them: floats as text plus `FLOATS`. Raises
    `ValueError` naming a header AMQP cannot carry, before anything is sent."""
    headers: dict[str, Any] = {}
    floats: dict[str, float] = {}
    for name, value in message.headers.items():
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(
                    f"message {message.id}: header {name!r} is {value!r}; AMQP carries finite numbers only"
                )
            floats[name] = value
            headers[name] = repr(value)
        elif isinstance(value, int) and not isinstance(value, bool) and not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise ValueError(f"message {message.id}: header {name!r} is {value}, beyond AMQP's 64-bit integers")
        elif isinstance(value, str) and len(value.encode()) > 2**31:
            raise ValueError(f"message {message.id}: header {name!r} is too long for AMQP")
        else:
            headers[name] = value
    if floats:
        headers[FLOATS] = json.dumps(floats)
    return headers


def _floats(packed: Any, headers: Mapping[str, HeaderValue]) -> dict[str, float]:
    """The full-precision floats of `FLOATS`, for headers still holding their text form
    (a plain client may have changed a header since; then its own value stands)."""
    try:
        floats = json.loads(_text(packed)) if packed is not None else {}
    except ValueError:
        return {}
    if not isinstance(floats, dict):
        return {}
    return {
        k: float(v)
        for k, v in floats.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and headers.get(k) == repr(float(v))
    }


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
