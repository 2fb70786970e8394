"""Payload <-> body bytes: pydantic models and JSON-able values become JSON bodies,
bytes pass through untouched. No wrapper around the body, so any client can read it."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, TypeAdapter

from mailbag.broker.errors import MailbagError

JSON = "application/json"
BINARY = "application/octet-stream"


class PayloadError(MailbagError, ValueError):
    """A body could not be decoded or did not match the handler's model."""


def encode(payload: Any) -> tuple[bytes, str, str | None]:
    """(body, content type, type name) for a payload: a pydantic model, bytes, or any
    JSON-serialisable value."""
    if isinstance(payload, BaseModel):
        return payload.model_dump_json().encode(), JSON, type(payload).__name__
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload), BINARY, None
    try:
        return json.dumps(payload, separators=(",", ":"), default=_default).encode(), JSON, None
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload of type {type(payload).__name__} is not JSON-serialisable: {exc}") from None


def _default(value: Any) -> Any:
    return TypeAdapter(type(value)).dump_python(value, mode="json")


def decode(body: bytes, content_type: str | None, model: Any = None) -> Any:
    """The handler's argument: `model` validated from JSON when given, else decoded JSON
    for JSON bodies and raw bytes for anything else. Raises `PayloadError` saying why."""
    try:
        if model is not None:
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model.model_validate_json(body)
            return TypeAdapter(model).validate_json(body)
        if content_type is None or content_type.split(";")[0].strip() in (JSON, "text/json"):
            return json.loads(body)
        return body
    except ValueError as exc:  # pydantic.ValidationError and json.JSONDecodeError are ValueErrors
        raise PayloadError(_describe(exc)) from exc


def _describe(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ())) or "body"
            parts.append(f"{where}: {e.get('msg')}")
        return "payload failed validation: " + "; ".join(parts)
    return f"payload is not valid JSON: {exc}"
