"""The transactional outbox: events written in the application's own database
transaction, and the relay that publishes them once committed.

A committed business change always produces its event, and a rolled-back one never
does. Stores: SQLite (`sqlite3`) and PostgreSQL (`asyncpg`, loaded only when used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mailbag.broker.errors import ConfigurationError
from mailbag.broker.storage import MEMORY, parse_url
from mailbag.publishers.outbox.base import DEFAULT_TABLE, Outbox, OutboxStats, PendingRow
from mailbag.publishers.outbox.relay import Relay, RelaySettings
from mailbag.publishers.outbox.sqlite import SqliteOutbox

if TYPE_CHECKING:
    from mailbag.publishers.outbox.postgres import PostgresOutbox


def open_outbox(url: str, *, table: str = DEFAULT_TABLE, **options: Any) -> Outbox:
    """The outbox for a database URL: `sqlite:///relative.db` or `sqlite:////absolute.db`
    (SQLAlchemy's meaning, see `mailbag.broker.storage`), or
    `postgresql://user:pass@host:port/db`."""
    parsed = parse_url(url, own=(), what="outbox database")
    if parsed.sqlite:
        if parsed.target == MEMORY:
            raise ConfigurationError("the outbox needs a database file the application shares: sqlite:///path.db")
        return SqliteOutbox(parsed.target, table=table, **options)
    from mailbag.publishers.outbox.postgres import PostgresOutbox

    return PostgresOutbox(parsed.target, table=table, **options)


def __getattr__(name: str) -> Any:
    if name == "PostgresOutbox":
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
