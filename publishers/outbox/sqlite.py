"""The outbox on SQLite (the standard library's `sqlite3`).

The application calls `add` on its own connection inside its transaction: a `sqlite3`
connection or cursor (`add` returns the id), or an `aiosqlite` connection, such as the
`ctx.transaction` of a transactional handler on the SQLite store (`await outbox.add(...)`
returns the id). Anything else is a `TypeError`, never a silent no-op. The relay
works on a connection of its own and never holds a write lock while it publishes:
it reads due rows, publishes them, then marks them sent in a short transaction, so a
crash in between publishes those rows again (same message ids) and loses none. One
relay per database: SQLite has no row locks to share the rows between relays.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, overload

import aiosqlite

from mailbag.publishers.envelope import TopicModels
from mailbag.publishers.outbox.base import (
    COLUMNS,
    DEFAULT_TABLE,
    Claim,
    Outbox,
    OutboxStats,
    PendingRow,
    check_table,
    due_rows_sql,
    now,
    pending_row,
    row_values,
    schema_sql,
)

#: SQLite's default bound on host parameters is 999 on old builds
_CHUNK = 500


class SqliteOutbox(Outbox):
    """The outbox table `table` in the SQLite database at `path`.

    with sqlite3.connect(path) as conn:           # one transaction
        conn.execute("INSERT INTO orders ...")
        outbox.add(conn, "orders.placed", order, key=order.id)
    """

    def __init__(
        self,
        path: str,
        *,
        table: str = DEFAULT_TABLE,
        models: Mapping[str, Any] | None = None,
        app: Any = None,
        poll_interval: float = 0.05,
    ) -> None:
        if "." in check_table(table):
            raise ValueError(f"SQLite outbox table {table!r} cannot be schema-qualified")
        self.path = path
        self.table = table
        self.models = TopicModels(models, app)
        self.poll_interval = poll_interval
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()
        self._insert = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

    @overload
    def add(
        self,
        tx: aiosqlite.Connection,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> Awaitable[str]: ...

    @overload
    def add(
        self,
        tx: sqlite3.Connection | sqlite3.Cursor,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> str: ...

    def add(
        self,
        tx: sqlite3.Connection | sqlite3.Cursor | aiosqlite.Connection,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        message_id: str | None = None,
    ) -> str | Awaitable[str]:
        """Write the event in the caller's open transaction; it is published once that
        transaction commits, and never if it rolls back. Returns the message id (with an
        `aiosqlite` connection: an awaitable of it)."""
        if not isinstance(tx, (sqlite3.Connection, sqlite3.Cursor, aiosqlite.Connection)):
            raise TypeError(
                f"outbox.add needs a sqlite3 connection or cursor, or an aiosqlite connection, not {type(tx).__name__}"
            )
        conn = tx.connection if isinstance(tx, sqlite3.Cursor) else tx
        if conn.isolation_level is None and not conn.in_transaction:
            raise ValueError("outbox.add needs a transaction: this connection is in autocommit mode and none is open")
        message = self.message(
            topic,
            payload,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            message_id=message_id,
        )
        if isinstance(tx, aiosqlite.Connection):
            return self._add_async(tx, row_values(message), message.id)
        tx.execute(self._insert, row_values(message))
        return message.id

    async def _add_async(self, conn: aiosqlite.Connection, values: Sequence[Any], message_id: str) -> str:
        await conn.execute(self._insert, values)
        return message_id

    def create_table(self, conn: sqlite3.Connection) -> None:
        """Create the table and its indexes if missing (for the application's migrations;
        the relay calls it too)."""
        conn.executescript(
            schema_sql(self.table, self.table, seq="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", real="REAL")
        )

    # -- relay side ---------------------------------------------------------------

    async def setup(self) -> None:
        await self._run(self.create_table)

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Claim]:
        def fetch(conn: sqlite3.Connection) -> list[PendingRow]:
            rows = conn.execute(due_rows_sql(self.table, "?1", "?2"), (now(), limit)).fetchall()
            return [pending_row(r) for r in rows]

        yield _SqliteClaim(self, await self._run(fetch))

    async def wait_for_rows(self, timeout: float) -> None:
        """SQLite cannot notify: watch `PRAGMA data_version`, which changes when another
        connection commits, every `poll_interval` seconds."""
        read = lambda conn: conn.execute("PRAGMA data_version").fetchone()[0]  # noqa: E731
        version = await self._run(read)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - loop.time())))
            if await self._run(read) != version:
                return

    async def prune(self, older_than: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            with conn:
                cur = conn.execute(
                    f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at < ?", (now() - older_than,)
                )
            return cur.rowcount

        return await self._run(delete)

    async def stats(self) -> OutboxStats:
        def count(conn: sqlite3.Connection) -> OutboxStats:
            r = conn.execute(
                f"""SELECT
                    SUM(sent_at IS NULL), SUM(sent_at IS NULL AND attempts > 0), SUM(sent_at IS NOT NULL),
                    MIN(CASE WHEN sent_at IS NULL THEN created_at END)
                FROM {self.table}"""
            ).fetchone()
            oldest = r[3]
            return OutboxStats(r[0] or 0, r[1] or 0, r[2] or 0, None if oldest is None else max(0.0, now() - oldest))

        return await self._run(count)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self, work: Any) -> Any:
        """Run `work(connection)` on the outbox's own connection, off the event loop."""
        async with self._lock:
            if self._conn is None:
                self._conn = await asyncio.to_thread(self._connect)
            return await asyncio.to_thread(work, self._conn)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    async def _update(self, sql: str, head: tuple[Any, ...], message_ids: Sequence[str]) -> None:
        def update(conn: sqlite3.Connection) -> None:
            with conn:
                for i in range(0, len(message_ids), _CHUNK):
                    chunk = message_ids[i : i + _CHUNK]
                    conn.execute(f"{sql} WHERE message_id IN ({', '.join('?' * len(chunk))})", (*head, *chunk))

        await self._run(update)


class _SqliteClaim(Claim):
    def __init__(self, outbox: SqliteOutbox, rows: list[PendingRow]) -> None:
        self._outbox = outbox
        self.rows = rows

    async def sent(self, message_ids: Sequence[str]) -> None:
        await self._outbox._update(f"UPDATE {self._outbox.table} SET sent_at = ?", (now(),), message_ids)

    async def failed(self, message_ids: Sequence[str], error: str, retry_in: float) -> None:
        await self._outbox._update(
            f"UPDATE {self._outbox.table} SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?",
            (error[:2000], now() + retry_in),
            message_ids,
        )
