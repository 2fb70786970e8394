"""The outbox on SQLite.

The application calls `add` on its own connection inside its transaction: a `sqlite3`
connection or cursor (`add` returns the id), or an `aiosqlite` connection, such as the
`ctx.transaction` of a transactional handler on the SQLite store (`await outbox.add(...)`
returns the id). Anything else is a `TypeError`, never a silent no-op. The relay works
on a connection of its own (aiosqlite, opened by `mailbag.broker.storage`) and never
holds a write lock while it publishes: it reads due rows, publishes them, then marks
them sent in a short transaction, so a crash in between publishes those rows again
(same message ids) and loses none. One relay per database: SQLite has no row locks to
share the rows between relays.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Unpack, overload

import aiosqlite

from mailbag.broker.errors import ConfigurationError, StoreUnavailable
from mailbag.broker.outgoing import MessageFields
from mailbag.broker.storage import MEMORY, open_sqlite
from mailbag.publishers.outbox.base import (
    Claim,
    Outbox,
    OutboxOptions,
    OutboxStats,
    PendingRow,
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

    def __init__(self, path: str, *, poll_interval: float = 0.05, **options: Unpack[OutboxOptions]) -> None:
        super().__init__(mark="?", **options)
        if "." in self.table:
            raise ConfigurationError(f"SQLite outbox table {self.table!r} cannot be schema-qualified")
        self.path = path
        self.poll_interval = poll_interval
        self._conn: aiosqlite.Connection | None = None

    @overload
    def add(
        self, tx: aiosqlite.Connection, topic: str, payload: Any, **fields: Unpack[MessageFields]
    ) -> Awaitable[str]: ...

    @overload
    def add(
        self, tx: sqlite3.Connection | sqlite3.Cursor, topic: str, payload: Any, **fields: Unpack[MessageFields]
    ) -> str: ...

    def add(
        self,
        tx: sqlite3.Connection | sqlite3.Cursor | aiosqlite.Connection,
        topic: str,
        payload: Any,
        **fields: Unpack[MessageFields],
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
            raise ConfigurationError(
                "outbox.add needs a transaction: this connection is in autocommit mode and none is open"
            )
        message = self.message(topic, payload, **fields)
        if isinstance(tx, aiosqlite.Connection):
            return self._add_async(tx, row_values(message), message.id)
        try:
            tx.execute(self.insert_sql, row_values(message))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            # first use: the table joins the caller's transaction, and commits with the row
            for statement in self._schema_statements():
                tx.execute(statement)
            tx.execute(self.insert_sql, row_values(message))
        return message.id

    async def _add_async(self, conn: aiosqlite.Connection, values: Sequence[Any], message_id: str) -> str:
        try:
            await conn.execute(self.insert_sql, values)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            for statement in self._schema_statements():  # first use, as in `add`
                await conn.execute(statement)
            await conn.execute(self.insert_sql, values)
        return message_id

    def _schema_statements(self) -> list[str]:
        return [s for s in self._schema().split(";") if s.strip()]

    def create_table(self, conn: sqlite3.Connection) -> None:
        """Create the table and its indexes if missing, and commit (for the application's
        migrations; `add` creates them on first use, the relay at start)."""
        conn.executescript(self._schema())

    # -- relay side ---------------------------------------------------------------

    async def setup(self) -> None:
        async with self._connection() as conn:
            await conn.executescript(self._schema())

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Claim]:
        async with self._connection() as conn:
            async with conn.execute(due_rows_sql(self.table, "?1", "?2"), (now(), limit)) as cursor:
                rows = [pending_row(dict(r)) for r in await cursor.fetchall()]
        yield _SqliteClaim(self, rows)

    async def wait_for_rows(self, timeout: float) -> None:
        """SQLite cannot notify: watch `PRAGMA data_version`, which changes when another
        connection commits, every `poll_interval` seconds."""
        version = await self._scalar("PRAGMA data_version")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - loop.time())))
            if await self._scalar("PRAGMA data_version") != version:
                return

    async def prune(self, older_than: float) -> int:
        async with self._connection() as conn:
            sql = f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at < ?"
            async with conn.execute(sql, (now() - older_than,)) as cursor:
                return cursor.rowcount

    async def stats(self) -> OutboxStats:
        async with self._connection() as conn:
            async with conn.execute(
                f"""SELECT
                    SUM(sent_at IS NULL), SUM(sent_at IS NULL AND attempts > 0), SUM(sent_at IS NOT NULL),
                    MIN(CASE WHEN sent_at IS NULL THEN created_at END)
                FROM {self.table}"""
            ) as cursor:
                r = await cursor.fetchone()
        assert r is not None  # an aggregate always returns one row
        oldest = r[3]
        return OutboxStats(r[0] or 0, r[1] or 0, r[2] or 0, None if oldest is None else max(0.0, now() - oldest))

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """The outbox's own autocommit connection (opened on first use), one user at a time."""
        async with self._lock:
            if self._conn is None:
                if self.path != MEMORY and not await asyncio.to_thread(Path(self.path).is_file):
                    # the application creates the database; a misspelt path must not become an empty one
                    raise StoreUnavailable(
                        f"no SQLite database at {self.path}: check the path; the application's first "
                        "outbox.add (or outbox.create_table) creates it"
                    )
                self._conn = await open_sqlite(self.path)
                self._conn.row_factory = aiosqlite.Row
            yield self._conn

    async def _scalar(self, sql: str) -> Any:
        async with self._connection() as conn, conn.execute(sql) as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    def _schema(self) -> str:
        return schema_sql(self.table, self.table, seq="INTEGER PRIMARY KEY AUTOINCREMENT", blob="BLOB", real="REAL")

    async def _update(self, sql: str, head: tuple[Any, ...], message_ids: Sequence[str]) -> None:
        """One transaction, in chunks that stay under SQLite's bound on parameters."""
        async with self._connection() as conn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for i in range(0, len(message_ids), _CHUNK):
                    chunk = message_ids[i : i + _CHUNK]
                    await conn.execute(f"{sql} WHERE message_id IN ({', '.join('?' * len(chunk))})", (*head, *chunk))
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")


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
