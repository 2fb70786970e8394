"""The one way an outgoing message is built, whoever sends it: a `Publisher`, a
handler's follow-up (`Context.publish`), a saga's command, `mailbag publish` and a
`TestBus`. It encodes the payload, validates it against the model registered for its
topic (so a bad payload is refused before it is sent, or written to an outbox, rather
than dead-lettered by every consumer), refuses headers in mailbag's reserved
`x-mailbag-*` namespace (a forged attempt number would dead-letter a message early)
and checks the size the broker takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from mailbag.broker import headers as h
from mailbag.broker.codec import PayloadError, decode, encode
from mailbag.broker.errors import MessageTooLarge, PayloadRejected, ReservedHeader
from mailbag.broker.message import HeaderValue, Message


class MessageFields(TypedDict, total=False):
    """The optional fields a publish or an outbox row sets on a message."""

    key: str | None
    headers: Mapping[str, Any] | None
    correlation_id: str | None
    causation_id: str | None
    message_id: str | None


def outgoing(
    topic: str,
    payload: Any,
    *,
    model: Any = None,
    key: str | None = None,
    headers: Mapping[str, Any] | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    message_id: str | None = None,
    content_type: str | None = None,
    type_name: str | None = None,
    stamp: Mapping[str, HeaderValue] | None = None,
    max_size: int | None = None,
) -> Message:
    """The message for `payload`: a pydantic model, bytes (sent as `content_type`, by
    default application/octet-stream), or a JSON-able value. A new id unless
    `message_id` is given.

    Raises `ReservedHeader` for a header named `x-mailbag-...` (mailbag's own
    bookkeeping), `PayloadRejected` if `model` is given and the payload does not
    validate against it as a consumer would decode it, and `MessageTooLarge` when body
    and headers alone exceed `max_size` bytes. `stamp` is for mailbag's own reserved
    headers (a saga's); even there the ones the broker layer reads back, the attempt
    among them, are refused."""
    shown = [message_id or "(new message)"]
    _check_headers(headers or {}, stamp or {}, shown)
    try:
        body, encoded_type, encoded_name = encode(payload)
        if model is not None:
            decode(body, content_type or encoded_type, model)
            encoded_name = encoded_name or _name(model)
    except PayloadError as exc:
        raise PayloadRejected(f"payload for topic {topic!r} refused: {exc}", shown) from None
    all_headers = {**(headers or {}), **(stamp or {})}
    if max_size is not None:
        size = len(body) + sum(len(k) + len(str(v)) for k, v in all_headers.items())
        if size > max_size:
            raise MessageTooLarge(
                f"message {shown[0]} for topic {topic!r} is at least {size} bytes; the broker takes at most {max_size}"
            )
    message = Message(
        topic=topic,
        body=body,
        content_type=content_type or encoded_type,
        type=type_name or encoded_name,
        headers=all_headers,
        correlation_id=correlation_id,
        causation_id=causation_id,
        ordering_key=key,
    )
    return message.evolve(id=message_id) if message_id else message


def _check_headers(headers: Mapping[str, Any], stamp: Mapping[str, Any], shown: list[str]) -> None:
    reserved = sorted(k for k in headers if k.lower().startswith(h.PREFIX))
    if reserved:
        raise ReservedHeader(
            f"header {reserved[0]!r} is in the reserved {h.PREFIX}* namespace, which only mailbag writes; rename it",
            shown,
        )
    owned = sorted(k for k in stamp if k.lower() in h.BROKER_OWNED or not k.lower().startswith(h.PREFIX))
    if owned:
        raise ReservedHeader(
            f"header {owned[0]!r} cannot be stamped: only {h.PREFIX}* headers the broker layer does not read may be",
            shown,
        )


class TopicModels:
    """Topic -> the model its payloads must validate against. Built from explicit
    `models` and from an App's handlers (the model each handler of a topic expects);
    two different models for one topic is a mistake and raises at construction."""

    def __init__(self, models: Mapping[str, Any] | None = None, app: Any = None) -> None:
        self._models: dict[str, Any] = {}
        for handler in getattr(app, "handlers", {}).values():
            if handler.model is not None:
                self.register(handler.topic, handler.model)
        for topic, model in (models or {}).items():
            self.register(topic, model)

    def register(self, topic: str, model: Any) -> None:
        known = self._models.get(topic)
        if known is not None and known is not model:
            raise ValueError(f"topic {topic!r} already has model {_name(known)}; cannot also use {_name(model)}")
        self._models[topic] = model

    def get(self, topic: str) -> Any:
        return self._models.get(topic)

    def message(self, topic: str, payload: Any, **fields: Any) -> Message:
        """`outgoing(topic, payload, ...)` validated against the topic's model, if it has one."""
        return outgoing(topic, payload, model=self._models.get(topic), **fields)


def _name(model: Any) -> str:
    return getattr(model, "__name__", repr(model))
