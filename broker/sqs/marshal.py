"""`Message` <-> SNS/SQS wire form: a text body and at most ten message attributes.

Every envelope field travels as its own `mailbag.*` attribute and each header as an
attribute of its own name, so a plain boto3 client (or a service in another language)
reads them directly and SNS filter policies can match headers. Raw SNS -> SQS delivery
drops a message carrying more than ten attributes, so headers that do not fit (or whose
name or value SNS/SQS cannot carry natively) are packed, types intact, into one JSON
attribute `mailbag.headers`. The body is sent untouched when it is text SNS/SQS accept;
anything else travels base64-encoded and says so in `mailbag.body-encoding`. An
envelope field SQS cannot carry as text (a control character in an id) is refused.
A record of a Lambda SQS event decodes the same way (`from_lambda_record`).
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mailbag.broker import headers as h
from mailbag.broker.headers import ATTEMPTS_USED
from mailbag.broker.message import HeaderValue, Message

#: SNS delivers at most this many attributes to a raw-delivery SQS subscription
MAX_ATTRIBUTES = 10

ID = "mailbag.id"
TOPIC = "mailbag.topic"
CONTENT_TYPE = "mailbag.content-type"
TYPE = "mailbag.type"
CORRELATION_ID = "mailbag.correlation-id"
CAUSATION_ID = "mailbag.causation-id"
ORDERING_KEY = "mailbag.ordering-key"
CREATED_AT = "mailbag.created-at"
BODY_ENCODING = "mailbag.body-encoding"
HEADERS = "mailbag.headers"

_RESERVED_PREFIX = "mailbag."
_NAME = re.compile(r"^[A-Za-z0-9_\-]([A-Za-z0-9_\-.]{0,254}[A-Za-z0-9_\-])?$")
# characters SQS accepts in a body or string attribute (the XML 1.0 character set)
_TEXT = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]+$")
# SQS numbers: up to 38 significant digits, no exponent
_NUMBER = re.compile(r"^-?\d{1,38}(\.\d{1,38})?$")

Attributes = dict[str, dict[str, str]]


class Wire:
    """A message as SNS/SQS carry it: the body text and the message attributes."""

    __slots__ = ("attributes", "body")

    def __init__(self, body: str, attributes: Attributes) -> None:
        self.body = body
        self.attributes = attributes

    @property
    def size(self) -> int:
        """Bytes SNS/SQS count against their size limit: the body plus each attribute's
        name, data type and value."""
        total = len(self.body.encode())
        for name, attr in self.attributes.items():
            total += len(name.encode()) + len(attr["DataType"].encode()) + len(attr["StringValue"].encode())
        return total


def to_wire(message: Message) -> Wire:
    if not message.body:
        raise ValueError(f"message {message.id}: SNS and SQS cannot carry an empty body")
    attributes: Attributes = {}
    body = _text(message.body)
    if body is None:
        body = base64.b64encode(message.body).decode()
        attributes[BODY_ENCODING] = _string("base64")
    fields = {
        ID: message.id,
        TOPIC: message.topic,
        CONTENT_TYPE: message.content_type,
        TYPE: message.type,
        CORRELATION_ID: message.correlation_id,
        CAUSATION_ID: message.causation_id,
        ORDERING_KEY: message.ordering_key,
        CREATED_AT: message.created_at.astimezone(UTC).isoformat(),
    }
    for name, value in fields.items():
        if value is None:
            continue
        if not _TEXT.match(value):
            raise ValueError(f"message {message.id}: {name} holds characters SNS/SQS cannot carry: {value!r}")
        attributes[name] = _string(value)
    packed: dict[str, HeaderValue] = {}
    native = {k: _native(k, v) for k, v in message.headers.items()}
    room = MAX_ATTRIBUTES - len(attributes)
    fits = all(native.values()) and len(native) <= room
    for name, header in message.headers.items():
        attr = native[name]
        if attr is not None and (fits or len(attributes) < MAX_ATTRIBUTES - 1):
            attributes[name] = attr
        else:
            packed[name] = header
    if packed:
        attributes[HEADERS] = _string(json.dumps(packed, separators=(",", ":")))
    return Wire(body, attributes)


def from_wire(raw: Mapping[str, Any], default_topic: str) -> Message:
    """The message in an SQS `ReceiveMessage` result. Fields a plain client did not set
    fall back to the SQS message id, `default_topic` and the time SQS received it, and
    on a FIFO queue its ordering key to its `MessageGroupId`. (mailbag writes the
    ordering key whenever a message has one; the group of its own keyless FIFO message,
    the message id, is no key.)"""
    attributes = {name: _value(attr) for name, attr in raw.get("MessageAttributes", {}).items()}
    headers = {k: v for k, v in attributes.items() if not k.startswith(_RESERVED_PREFIX)}
    packed = attributes.get(HEADERS)
    if isinstance(packed, str):
        headers.update(json.loads(packed))
    body = raw["Body"].encode()
    if attributes.get(BODY_ENCODING) == "base64":
        body = base64.b64decode(body, validate=True)  # binascii.Error is a ValueError
        if not body:
            raise ValueError("the body is empty once decoded from base64 (SNS and SQS carry no empty body)")
    created = attributes.get(CREATED_AT)
    if isinstance(created, str):
        created_at = datetime.fromisoformat(created)
    else:
        sent_ms = int(raw.get("Attributes", {}).get("SentTimestamp", 0))
        created_at = datetime.fromtimestamp(sent_ms / 1000, UTC)
    return Message(
        topic=str(attributes.get(TOPIC) or default_topic),
        body=body,
        id=str(attributes.get(ID) or raw["MessageId"]),
        content_type=str(attributes.get(CONTENT_TYPE) or Message.__dataclass_fields__["content_type"].default),
        type=_optional(attributes.get(TYPE)),
        headers=headers,
        correlation_id=_optional(attributes.get(CORRELATION_ID)),
        causation_id=_optional(attributes.get(CAUSATION_ID)),
        ordering_key=_optional(attributes.get(ORDERING_KEY)) or _plain_group(raw, attributes),
        created_at=created_at,
    )


def _plain_group(raw: Mapping[str, Any], attributes: Mapping[str, HeaderValue]) -> str | None:
    """The FIFO message group of a message a plain client sent (one without mailbag's id)."""
    if ID in attributes:
        return None
    return raw.get("Attributes", {}).get("MessageGroupId")


def attempts_used(message: Message) -> tuple[Message, int]:
    """The message without its `ATTEMPTS_USED` header, and that count (0 without it).
    Raises `ValueError` naming the header when it holds no whole number >= 0."""
    raw = message.headers.get(ATTEMPTS_USED)
    if raw is None:
        return message, 0
    try:
        used = int(raw) if not isinstance(raw, float) or raw.is_integer() else -1
    except (TypeError, ValueError):
        used = -1
    if isinstance(raw, bool) or used < 0:
        raise ValueError(f"reserved header {ATTEMPTS_USED!r} is not a whole number >= 0: {raw!r}")
    return message.evolve(headers={k: v for k, v in message.headers.items() if k != ATTEMPTS_USED}), used


def with_attempts_used(message: Message, used: int) -> Message:
    return message.evolve(headers={**message.headers, ATTEMPTS_USED: used})


def dead_letter_copy(
    message: Message, queue: str, attempts: int, reason: str, error: BaseException | None, limit: int
) -> Message:
    """The message as it goes to a dead-letter queue, stamped (`dead_letter_stamp`),
    within `limit` bytes on the wire: the stamp's text gets less room by what the wire
    form is over (JSON escaping of packed headers makes a non-ASCII character up to six
    bytes), so a message near the size limit still carries why it died. An empty body
    (SQS carries none) is replaced by a note saying so."""
    message = message.evolve(body=message.body or b"(empty body)")
    room = h.DEAD_LETTER_TEXT_MAX
    while True:
        stamp = h.dead_letter_stamp(message.topic, queue, attempts, reason, error, room)
        dead = message.evolve(headers={**message.headers, **stamp})
        excess = to_wire(dead).size - limit
        if excess <= 0 or room <= h.DEAD_LETTER_TEXT_MIN:
            return dead  # (one still over is refused by the send, and comes back later)
        room = max(h.DEAD_LETTER_TEXT_MIN, room - excess)


#: message ids whose uncounted receives a consumer remembers (the oldest are forgotten)
UNCOUNTED_KEPT = 10_000


def uncount(uncounted: dict[str, int], message_id: str) -> None:
    """One more receive of SQS message `message_id` that ran no handler (a FIFO
    postpone, a record held back behind a failure of its group): SQS counts it in
    `ApproximateReceiveCount`, mailbag does not count it as an attempt."""
    uncounted[message_id] = uncounted.pop(message_id, 0) + 1
    while len(uncounted) > UNCOUNTED_KEPT:
        del uncounted[next(iter(uncounted))]


def from_lambda_record(record: Mapping[str, Any], default_topic: str) -> Message:
    """The message in one record of a Lambda SQS event, decoded as `from_wire` decodes
    a received message. With raw delivery (or a direct send) the record's body and
    attributes are the message; with raw delivery off the body is SNS's JSON envelope
    (`Type` `Notification`), whose `Message` and `MessageAttributes` are."""
    envelope = _sns_envelope(record)
    if envelope is None:
        body, message_id = record["body"], record["messageId"]
        attributes = {
            name: _attribute(attr["dataType"], attr.get("stringValue"), attr.get("binaryValue"))
            for name, attr in record.get("messageAttributes", {}).items()
        }
    else:
        body, message_id = envelope["Message"], envelope["MessageId"]
        attributes = {
            name: _attribute(attr["Type"], str(attr["Value"]), attr["Value"])
            for name, attr in envelope.get("MessageAttributes", {}).items()
        }
    raw = {
        "Body": body,
        "MessageId": message_id,
        "MessageAttributes": attributes,
        "Attributes": record.get("attributes", {}),
    }
    return from_wire(raw, default_topic)


def _sns_envelope(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The SNS notification wrapped around a record's message, or None when the record
    is the message itself (it has attributes of its own, or its body is no envelope)."""
    if record.get("messageAttributes"):
        return None
    try:
        body = json.loads(record["body"])
    except ValueError:
        return None
    if (
        isinstance(body, dict)
        and body.get("Type") == "Notification"
        and {"TopicArn", "Message", "MessageId"} <= body.keys()
    ):
        return body
    return None


def _attribute(data_type: str, text: str | None, binary: str | None) -> dict[str, Any]:
    """An attribute from a Lambda event or SNS envelope (binary values base64 text) in
    the shape `ReceiveMessage` returns (binary values as bytes)."""
    if data_type.startswith("Binary"):
        return {"DataType": data_type, "BinaryValue": base64.b64decode(binary or "")}
    return {"DataType": data_type, "StringValue": text}


def _text(body: bytes) -> str | None:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return None
    return text if _TEXT.match(text) else None


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _native(name: str, value: HeaderValue) -> dict[str, str] | None:
    """The attribute for a header, or None when it must be packed: a name SNS/SQS
    reject or reserve, an empty or non-XML string, a bool, or a number SQS cannot hold."""
    if not _NAME.match(name) or ".." in name or name.lower().startswith(("aws.", "amazon.", _RESERVED_PREFIX)):
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _string(value) if _TEXT.match(value) else None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        text = repr(value)
        return {"DataType": "Number", "StringValue": text} if _NUMBER.match(text) else None
    return None


def _value(attr: Mapping[str, Any]) -> HeaderValue:
    kind = attr.get("DataType", "String")
    if kind.startswith("Binary"):
        return base64.b64encode(attr["BinaryValue"]).decode()
    text = attr["StringValue"]
    if kind.startswith("Number"):
        try:
            return int(text)
        except ValueError:
            return float(text)
    return text


def _optional(value: HeaderValue | None) -> str | None:
    return None if value is None else str(value)
