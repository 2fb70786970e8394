"""Turning a payload into the `Message` that is published: encoding, and validation
against the model registered for the topic, so a bad payload is refused before it is
sent (or written to an outbox) rather than dead-lettered by every consumer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

from mailbag.broker import Message
from mailbag.broker.codec import PayloadError, decode, encode
from mailbag.broker.headers import PREFIX as RESERVED_PREFIX
from mailbag.publishers.errors import PayloadRejected, ReservedHeader


class MessageFields(TypedDict, total=False):
    """The optional fields a publish or an outbox row sets on a message."""

    key: str | None
    headers: Mapping[str, Any] | None
    correlation_id: str | None
    causation_id: str | None
    message_id: str | None


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

    def message(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> Message:
        """The message for `payload`: a pydantic model, bytes, or a JSON-able value.
        Raises `PayloadRejected` if the topic has a model and the payload does not
        validate against it as a consumer would decode it, and `ReservedHeader` for a
        header named `x-mailbag-...` (mailbag's own bookkeeping)."""
        ids: dict[str, Any] = {"id": message_id} if message_id else {}
        refuse_reserved_headers(headers, message_id)
        try:
            body, content_type, type_name = encode(payload)
            model = self._models.get(topic)
            if model is not None:
                decode(body, content_type, model)
                type_name = type_name or _name(model)
        except PayloadError as exc:
            raise PayloadRejected(
                f"payload for topic {topic!r} refused: {exc}", [message_id or "(new message)"]
            ) from None
        return Message(
            topic=topic,
            body=body,
            content_type=content_type,
            type=type_name,
            headers=dict(headers or {}),
            correlation_id=correlation_id,
            causation_id=causation_id,
            ordering_key=key,
            **ids,
        )


def refuse_reserved_headers(headers: Mapping[str, Any] | None, message_id: str | None = None) -> None:
    """Raise `ReservedHeader` for a header named `x-mailbag-...`: mailbag's own
    bookkeeping (attempts, dead-letter reasons), which no publisher may set."""
    reserved = sorted(k for k in headers or {} if k.lower().startswith(RESERVED_PREFIX))
    if reserved:
        raise ReservedHeader(
            f"header {reserved[0]!r} is in the reserved {RESERVED_PREFIX}* namespace, which only mailbag "
            "writes; rename it",
            [message_id or "(new message)"],
        )


def _name(model: Any) -> str:
    return getattr(model, "__name__", repr(model))
