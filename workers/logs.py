"""Worker log lines: one line per event, as `message key=value ...` text or as JSON
objects, with the ids of the message being handled. Payloads are never logged, and
`Redact` masks secrets in every record that reaches the handlers `configure` sets up,
third-party records included.

Using your own handlers? Add the same filters to each of them:

    handler.addFilter(CorrelationFilter())
    handler.addFilter(Redact())
"""

from __future__ import annotations

import logging
import re
import sys
from typing import IO, Literal

from pythonjsonlogger.json import JsonFormatter

from mailbag.broker.url import mask_url
from mailbag.workers.middleware.correlation import Ids, current

#: record attributes printed as key=value when present, in this order
FIELDS = ("message_id", "queue", "attempt", "action", "delay", "error", "correlation_id", "causation_id")

LogFormat = Literal["text", "json"]

#: what `Redact` puts in place of a secret
MASK = "***"

#: names whose value is a secret, as `name: value`, `name=value`, `'name': b'value'`
#: (dict reprs, HTTP headers, query strings, environment dumps)
_SECRET_NAMES = r"[\w-]*secret[\w-]*|[\w-]*token|signature|authorization|password|passwd"
_SECRET_VALUE = re.compile(rf"""(?i)(\b(?:{_SECRET_NAMES})['"]?\s*[:=]\s*b?)(?:'[^']*'|"[^"]*"|[^\s,&;}}'"]+)""")

#: library DEBUG lines that carry message bodies or signing material, by logger: only
#: their lead-in is kept, e.g. "Making request for OperationModel(name=SendMessage)
#: with params: [redacted]". botocore logs request parameters, signed headers and
#: response bodies (received messages); aiormq logs the raw frames it sends.
_PAYLOAD_LINES = {
    "botocore": re.compile(
        r"(Making request for \S+ with params|Sending http request|Response body"
        r"|CanonicalRequest|StringToSign|Signature)"
    ),
    "aiormq": re.compile(r"(Prepare to send \w+)"),
}


#: what every record has; anything else came in `extra` and is redacted too
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """`text` with URL passwords and credential values (anything named like a secret
    or a token, Authorization headers, signatures, passwords) replaced by `***`."""
    return _SECRET_VALUE.sub(rf"\g<1>{MASK}", mask_url(text))


class Redact(logging.Filter):
    """Masks secrets in a record before any formatter sees it: the message (formatted
    with its arguments first), the traceback, the stack and every string extra. botocore's
    and aiormq DEBUG lines with message bodies or signing material keep only their
    lead-in.

    The record is changed in place, so every handler after this filter sees it
    masked; the traceback is kept as text (`exc_text`), not as `exc_info`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # logging would print the raw arguments to stderr: drop them
            text = f"{record.msg} [log arguments did not format]"
        payload_line = _PAYLOAD_LINES.get(record.name.split(".", 1)[0])
        lead_in = payload_line.match(text) if payload_line is not None else None
        if lead_in is not None:
            text = f"{lead_in.group(1)}: [redacted]"
        record.msg, record.args = redact(text), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class CorrelationFilter(logging.Filter):
    """Adds the ids, queue and attempt of the message whose handler is running to every
    record, the handler's own included."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        if ids is not None:
            for name in Ids._fields:
                if getattr(record, name, None) is None:
                    setattr(record, name, getattr(ids, name))
        return True


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).splitlines()[0]
        pairs = [
            f"{name}={_quote(getattr(record, name))}" for name in FIELDS if getattr(record, name, None) is not None
        ]
        return " ".join([line, *pairs])


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, the record's extras
    (message_id, correlation_id, queue, attempt, ...) and the traceback as `exc_info`."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
    )


def configure(level: str = "INFO", format: LogFormat = "text", stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (default stderr) as key=value lines or JSON,
    with correlation ids added and secrets redacted (the `mailbag worker` setup)."""
    if format not in ("text", "json"):
        raise ValueError(f"log format must be text or json, got {format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if format == "json" else KeyValueFormatter())
    handler.addFilter(CorrelationFilter())
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def filter_root_handlers() -> None:
    """Add correlation ids and redaction to the handlers already on the root logger:
    a host's own (the Lambda runtime's, say), where `configure` is not called."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, Redact) for f in handler.filters):
            handler.addFilter(CorrelationFilter())
            handler.addFilter(Redact())
