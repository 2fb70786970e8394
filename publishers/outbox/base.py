"""What every outbox store shares: the table's columns, message <-> row mapping, the
contract the relay relies on, and the rule that keeps order per key.

The row keeps the whole message (id included), so a row published twice after a crash
reaches consumers as the same message and idempotent consumers drop the duplicate.
"""

from __future__ import annotations

import asyncio
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

from mailbag.broker import Message, tracing
from mailbag.broker.outgoing import TopicModels
from mailbag.broker.storage import check_identifier

DEFAULT_TABLE = "mailbag_outbox"

#: the columns `add` writes, in order; the store adds seq, attempts, next_attempt_at,
#: last_error and sent_at
COLUMNS = (
    "message_id",
    "topic",
    "ordering_key",
    "body",
    "content_type",
    "type",
    "headers",
    "correlation_id",
    "causation_id",
    "created_at",
)


def check_table(name: str) -> str:
    """A table name, optionally schema-qualified, safe to put in SQL."""
    return check_identifier(name, "outbox table", qualified=True)


class OutboxOptions(TypedDict, total=False):
    """What every outbox takes: its table (default `mailbag_outbox`), and the topic
    models (explicit, or an App's) that payloads are validated against."""

    table: str
    models: Mapping[str, Any] | None
    app: Any


@dataclass(frozen=True)
class PendingRow:
    """A row waiting to be published: its place in the outbox, the message, and how
    many publishes of it failed so far."""

    seq: int
    message: Message
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    failing: int
    sent: int
    oldest_pending_age: float | None


def schema_sql(table: str, index_prefix: str, *, seq: str, blob: str, real: str) -> str:
    """CREATE TABLE and its indexes, in the dialect's types for the serial key, bytes
    and floats (times are epoch seconds, compared across processes and hosts)."""
    return f"""
        CREATE TABLE IF NOT EXISTS {table} (
            seq {seq},
            message_id TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            ordering_key TEXT,
            body {blob} NOT NULL,
            content_type TEXT NOT NULL,
            type TEXT,
            headers TEXT NOT NULL,
            correlation_id TEXT,
            causation_id TEXT,
            created_at {real} NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL DEFAULT 0,
            last_error TEXT,
            sent_at {real}
        );
        CREATE INDEX IF NOT EXISTS {index_prefix}_pending ON {table} (seq) WHERE sent_at IS NULL;
        CREATE INDEX IF NOT EXISTS {index_prefix}_pending_key ON {table} (ordering_key, seq) WHERE sent_at IS NULL;
        CREATE INDEX IF NOT EXISTS {index_prefix}_sent ON {table} (sent_at) WHERE sent_at IS NOT NULL;
        """


def due_rows_sql(table: str, now: str, limit: str) -> str:
    """Unsent rows due at `now`, oldest first, at most `limit` (both SQL parameters).
    A row whose key has an earlier row still waiting out its backoff is not due: it
    would overtake it, and it must not fill the batch while others could go."""
    return f"""
        SELECT o.seq, o.attempts, {", ".join("o." + c for c in COLUMNS)} FROM {table} o
        WHERE o.sent_at IS NULL AND o.next_attempt_at <= {now}
          AND NOT EXISTS (
            SELECT 1 FROM {table} p WHERE p.sent_at IS NULL AND p.ordering_key = o.ordering_key
              AND p.seq < o.seq AND p.next_attempt_at > {now})
        ORDER BY o.seq LIMIT {limit}
        """


def row_values(message: Message) -> tuple[Any, ...]:
    """The values of `COLUMNS` for a message."""
    return (
        message.id,
        message.topic,
        message.ordering_key,
        message.body,
        message.content_type,
        message.type,
        json.dumps(dict(message.headers), separators=(",", ":")),
        message.correlation_id,
        message.causation_id,
        message.created_at.timestamp(),
    )


def pending_row(row: Mapping[str, Any]) -> PendingRow:
    """A row of `due_rows_sql` as the relay sees it."""
    message = Message(
        topic=row["topic"],
        body=bytes(row["body"]),
        id=row["message_id"],
        content_type=row["content_type"],
        type=row["type"],
        headers=json.loads(row["headers"]),
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        ordering_key=row["ordering_key"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),
    )
    return PendingRow(row["seq"], message, row["attempts"])


def keep_key_order(rows: Sequence[PendingRow], unsent: Mapping[str, Iterable[int]]) -> list[PendingRow]:
    """The rows that may be published now without overtaking an earlier row of their
    key: for each key, only the claimed rows that are exactly the oldest unsent rows of
    that key (`unsent`: key -> seqs of every unsent row up to the last claimed one).
    Rows without a key keep no order and always pass."""
    claimed: dict[str, list[int]] = {}
    for r in rows:
        if r.message.ordering_key is not None:
            claimed.setdefault(r.message.ordering_key, []).append(r.seq)
    allowed: set[int] = set()
    for key, seqs in claimed.items():
        for mine, oldest in zip(seqs, sorted(unsent.get(key, ()))):
            if mine != oldest:
                break
            allowed.add(mine)
    return [r for r in rows if r.message.ordering_key is None or r.seq in allowed]


class Claim(ABC):
    """A batch of rows the relay holds: due, oldest first, order per key respected.
    `sent` marks rows published (after the broker's confirm); `failed` records an
    error and when to try the rows again. Leaving the `claim()` block releases what
    was neither."""

    rows: list[PendingRow]

    @abstractmethod
    async def sent(self, message_ids: Sequence[str]) -> None: ...

    @abstractmethod
    async def failed(self, message_ids: Sequence[str], error: str, retry_in: float) -> None: ...


class Outbox(ABC):
    """A table of events written in the application's own transactions, and the
    relay-side operations on it. `add` takes the application's connection; everything
    else uses the outbox's own."""

    def __init__(
        self, *, mark: str, table: str = DEFAULT_TABLE, models: Mapping[str, Any] | None = None, app: Any = None
    ) -> None:
        """`mark` is the dialect's numbered parameter sign (`?` for SQLite, `$` for PostgreSQL)."""
        self.table = check_table(table)
        self.models = TopicModels(models, app)
        self._lock = asyncio.Lock()
        values = ", ".join(f"{mark}{i}" for i in range(1, len(COLUMNS) + 1))
        self.insert_sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({values})"

    def message(self, topic: str, payload: Any, **fields: Any) -> Message:
        """The message `add` stores: validated against the topic's model if it has one,
        and (with tracing on) carrying the trace it was written in, which the relay's
        publish keeps."""
        return tracing.created(self.models.message(topic, payload, **fields))

    @abstractmethod
    async def setup(self) -> None:
        """Create the table and its indexes if missing. Idempotent."""

    @abstractmethod
    def claim(self, limit: int) -> AbstractAsyncContextManager[Claim]:
        """Up to `limit` due rows for this relay alone (see `Claim`)."""

    @abstractmethod
    async def wait_for_rows(self, timeout: float) -> None:
        """Return when new rows may have been committed, or after `timeout` seconds."""

    @abstractmethod
    async def prune(self, older_than: float) -> int:
        """Delete rows sent more than `older_than` seconds ago; returns how many."""

    @abstractmethod
    async def stats(self) -> OutboxStats: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Outbox:
        await self.setup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def now() -> float:
    """Wall-clock seconds: rows are compared across processes and hosts."""
    return time.time()
