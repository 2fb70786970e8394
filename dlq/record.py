"""The dead-letter record: why a message is in a dead-letter queue, read from what
travels with it.

Three sources, richest first: the `x-mailbag-*` headers our adapters stamp
(`mailbag.broker.headers.dead_letter_stamp`); RabbitMQ's own `x-death` / `x-first-death-*`
headers when the broker dead-lettered the message itself (rejected, expired, quorum
delivery limit); and, where nothing says why (an SQS redrive), the reason
"delivery limit exceeded" with the receive count as attempts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from mailbag.broker import Message
from mailbag.broker import headers as h

#: headers RabbitMQ adds when it dead-letters a message (3.13+ adds the x-last-* trio)
RABBITMQ_DEATH = "x-death"
RABBITMQ_DEATH_HEADERS = (
    RABBITMQ_DEATH,
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
)
#: how often the broker handed the message out: quorum queues' `x-delivery-count`;
#: the SQS adapter surfaces `ApproximateReceiveCount` under the same name
DELIVERY_COUNT = "x-delivery-count"

#: every header that says how the message died (or how many tries it had) rather than
#: what it is; replay drops them, so attempts start again at 1
DEATH_HEADERS = frozenset(h.DEAD_LETTER_HEADERS + RABBITMQ_DEATH_HEADERS + (DELIVERY_COUNT, h.ATTEMPTS_USED))

_RABBITMQ_REASONS = {
    "delivery_limit": h.DELIVERY_LIMIT_EXCEEDED,
    "rejected": "rejected by a consumer",
    "expired": "message TTL expired",
    "maxlen": "queue length limit exceeded",
}


class DeadLetter(BaseModel):
    """One message in a dead-letter queue and why it is there.

    `message` is the original as it was published: same id, body, properties and
    headers, with the death headers removed, so replaying it is indistinguishable from
    the first publish except that attempts start again at 1. Fields the broker did not
    record are None."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    message: Message
    dead_letter_queue: str
    source_queue: str | None = None
    reason: str
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    attempts: int | None = None
    first_failed_at: datetime | None = None
    last_failed_at: datetime | None = None
    worker_host: str | None = None

    @property
    def id(self) -> str:
        return self.message.id

    @classmethod
    def from_message(cls, dead: Message, dead_letter_queue: str, source_queue: str | None = None) -> DeadLetter:
        """Read a message taken from `dead_letter_queue`. `source_queue` is the queue the
        DLQ belongs to, used when the message does not say where it came from."""
        headers = dead.headers
        original = dead.evolve(headers={k: v for k, v in headers.items() if k not in DEATH_HEADERS})
        base = {"message": original, "dead_letter_queue": dead_letter_queue, "source_queue": source_queue}
        deaths = _deaths(headers.get(RABBITMQ_DEATH))
        if h.DEAD_REASON in headers:
            why = _from_stamp(headers, source_queue)
        elif deaths or "x-first-death-reason" in headers:
            why = _from_rabbitmq(headers, deaths, source_queue)
        else:
            why = {"reason": h.DELIVERY_LIMIT_EXCEEDED, "attempts": _int(headers.get(DELIVERY_COUNT))}
        return cls(**{**base, **why})

    def fields(self) -> dict[str, Any]:
        """The names a `--where` expression sees: flat values, times as ISO-8601 UTC
        strings (which compare correctly as text), the body as text."""
        m = self.message
        return {
            "id": m.id,
            "topic": m.topic,
            "type": m.type,
            "content_type": m.content_type,
            "correlation_id": m.correlation_id,
            "headers": dict(m.headers),
            "body": m.body.decode("utf-8", errors="replace"),
            "created_at": _iso(m.created_at),
            "source_queue": self.source_queue,
            "reason": self.reason,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "first_failed_at": _iso(self.first_failed_at),
            "last_failed_at": _iso(self.last_failed_at),
            "worker_host": self.worker_host,
        }


def _from_stamp(headers: Mapping[str, Any], source_queue: str | None) -> dict[str, Any]:
    failed_at = _time(headers.get(h.FAILED_AT))
    return {
        "source_queue": _text(headers.get(h.ORIGIN_QUEUE)) or source_queue,
        "reason": str(headers[h.DEAD_REASON]),
        "error_type": _text(headers.get(h.ERROR_TYPE)),
        "error_message": _text(headers.get(h.ERROR_MESSAGE)),
        "traceback": _text(headers.get(h.TRACEBACK)),
        "attempts": _int(headers.get(h.ATTEMPTS)),
        "first_failed_at": failed_at,
        "last_failed_at": failed_at,
        "worker_host": _text(headers.get(h.WORKER_HOST)),
    }


def _from_rabbitmq(
    headers: Mapping[str, Any], deaths: list[Mapping[str, Any]], source_queue: str | None
) -> dict[str, Any]:
    """x-death lists one entry per (queue, reason), most recent first; the first entry is
    the death that put the message where it is now."""
    last = deaths[0] if deaths else {}
    raw_reason = last.get("reason") or headers.get("x-last-death-reason") or headers.get("x-first-death-reason")
    queue = last.get("queue") or headers.get("x-last-death-queue") or headers.get("x-first-death-queue")
    times = sorted(t for t in (_time(d.get("time")) for d in deaths) if t is not None)
    rejections = sum(
        _int(d.get("count")) or 0 for d in deaths if d.get("queue") == queue and d.get("reason") == "rejected"
    )
    return {
        "source_queue": _text(queue) or source_queue,
        "reason": _RABBITMQ_REASONS.get(str(raw_reason), h.DELIVERY_LIMIT_EXCEEDED),
        "attempts": _int(headers.get(DELIVERY_COUNT)) or rejections or None,
        "first_failed_at": times[0] if times else None,
        "last_failed_at": _time(last.get("time")),
    }


def _deaths(value: Any) -> list[Mapping[str, Any]]:
    """x-death as the adapter hands it over: a list of tables, or that list as JSON text."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if isinstance(value, (list, tuple)):
        return [d for d in value if isinstance(d, Mapping)]
    return []


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> datetime | None:
    """A failure time from a header: a datetime, epoch seconds, or ISO-8601 text."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    else:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


#: the names a `--where` expression may use
FIELD_NAMES = tuple(DeadLetter.from_message(Message("t", b""), "t.dlq").fields())
