"""The transactional outbox: events written in the application's own database
transaction, and the relay that publishes them once committed.

A committed business change always produces its event, and a rolled-back one never
does. Stores: SQLite (`sqlite3`) and PostgreSQL (`asyncpg`, loaded only when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from mailbag.broker.errors import extras_named
from mailbag.publishers.outbox.base import DEFAULT_TABLE, Outbox, OutboxStats, PendingRow
from mailbag.publishers.outbox.relay import Relay, RelaySettings
from mailbag.publishers.outbox.sqlite import SqliteOutbox

if TYPE_CHECKING:
    from mailbag.publishers.outbox.postgres import PostgresOutbox


def open_outbox(url: str, *, table: str = DEFAULT_TABLE, **options: Any) -> Outbox:
    """The outbox for a database URL: `sqlite:///abs/path.db`, `sqlite:relative.db`,
    or `postgresql://user:pass@host:port/db`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        path = urlsplit(url).path
        if not path:
            raise ValueError("sqlite outbox URL needs a path: sqlite:///abs/path.db or sqlite:relative.db")
        return SqliteOutbox(path, table=table, **options)
    if scheme in ("postgres", "postgresql"):
        with extras_named():
            from mailbag.publishers.outbox.postgres import PostgresOutbox

        return PostgresOutbox(url, table=table, **options)
    raise ValueError(f"unknown outbox database URL scheme {scheme!r}; expected sqlite: or postgresql://")


def __getattr__(name: str) -> Any:
    if name == "PostgresOutbox":
        with extras_named():
            from mailbag.publishers.outbox.postgres import PostgresOutbox

        return PostgresOutbox
    raise AttributeError(name)


__all__ = [
    "DEFAULT_TABLE",
    "Outbox",
    "OutboxStats",
    "PendingRow",
    "PostgresOutbox",
    "Relay",
    "RelaySettings",
    "SqliteOutbox",
    "open_outbox",
]
