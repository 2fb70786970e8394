"""Worker log lines: one line per event, `message key=value ...`, with the ids of the
message being handled. Payloads and broker URLs are never logged (URLs only masked)."""

from __future__ import annotations

import logging

from workers.middleware.correlation import current

#: record attributes printed as key=value when present, in this order
FIELDS = ("message_id", "queue", "attempt", "action", "delay", "error", "correlation_id", "causation_id")


class CorrelationFilter(logging.Filter):
    """Adds the ids of the message whose handler is running to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        if ids is not None:
            for name in ("message_id", "correlation_id", "causation_id"):
                if getattr(record, name, None) is None:
                    setattr(record, name, getattr(ids, name))
        return True


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).splitlines()[0]
        pairs = [f"{name}={_quote(getattr(record, name))}" for name in FIELDS if getattr(record, name, None) is not None]
        return " ".join([line, *pairs])


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def configure(level: str = "INFO") -> None:
    """Send log records to stderr as key=value lines (the `mailbag worker` setup)."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter())
    handler.addFilter(CorrelationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
