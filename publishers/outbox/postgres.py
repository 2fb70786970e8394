"""The outbox on PostgreSQL (asyncpg).

The application calls `add` on its own asyncpg connection inside its transaction; an
insert trigger sends NOTIFY, so relays wake when rows commit instead of only polling.
A relay claims rows with `FOR UPDATE SKIP LOCKED` and keeps its transaction open while
it publishes and marks them sent: several relays share the table without publishing a
row twice, and a relay that dies releases its rows, unmarked, to the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Unpack

import asyncpg

from mailbag.broker.errors import ConfigurationError
from mailbag.broker.outgoing import MessageFields
from mailbag.broker.storage import open_postgres
from mailbag.publishers.outbox.base import (
    Claim,
    Outbox,
    OutboxOptions,
    OutboxStats,
    PendingRow,
    due_rows_sql,
    keep_key_order,
    now,
    pending_row,
    row_values,
    schema_sql,
)


class PostgresOutbox(Outbox):
    """The outbox table `table` (optionally `schema.table`) in the database at `dsn`.

    async with conn.transaction():
        await conn.execute("INSERT INTO orders ...")
        await outbox.add(conn, "orders.placed", order, key=order.id)
    """

    def __init__(self, dsn: str, **options: Unpack[OutboxOptions]) -> None:
        super().__init__(mark="$", **options)
        if len(self.table) > 63:
            raise ConfigurationError(
                f"outbox table name {self.table!r} is longer than PostgreSQL's 63-character channel names"
            )
        self.dsn = dsn
        self.channel = self.table
        self._conn: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._table_exists = False  # known once an insert found it; until then `add` creates it if missing

    async def add(self, tx: asyncpg.Connection, topic: str, payload: Any, **fields: Unpack[MessageFields]) -> str:
        """Write the event in the caller's open transaction; it is published once that
        transaction commits, and never if it rolls back. Returns the message id."""
        if not tx.is_in_transaction():
            raise ConfigurationError("outbox.add needs a transaction: call it inside `async with conn.transaction()`")
        message = self.message(topic, payload, **fields)
        values = row_values(message)
        if self._table_exists:
            await tx.execute(self.insert_sql, *values)
            return message.id
        try:
            async with tx.transaction():  # a savepoint: a missing table leaves the caller's transaction usable
                await tx.execute(self.insert_sql, *values)
        except asyncpg.UndefinedTableError:
            # first use: the table joins the caller's transaction, and commits with the row
            await self.create_table(tx)
            await tx.execute(self.insert_sql, *values)
        else:
            self._table_exists = True
        return message.id

    async def create_table(self, conn: asyncpg.Connection) -> None:
        """Create the table, its indexes and the NOTIFY trigger if missing (for the
        application's migrations; the relay calls it too). Safe to run concurrently."""
        schema, _, base = self.table.rpartition(".")
        qualified = f"{schema}." if schema else ""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"mailbag-outbox:{self.table}")
            await conn.execute(
                schema_sql(self.table, base, seq="BIGSERIAL PRIMARY KEY", blob="BYTEA", real="DOUBLE PRECISION")
            )
            await conn.execute(
                f"""
                CREATE OR REPLACE FUNCTION {qualified}{base}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN PERFORM pg_notify('{self.channel}', ''); RETURN NULL; END $$;
                CREATE OR REPLACE TRIGGER {base}_notify AFTER INSERT ON {self.table}
                    FOR EACH STATEMENT EXECUTE FUNCTION {qualified}{base}_notify();
                """
            )

    # -- relay side ---------------------------------------------------------------

    async def setup(self) -> None:
        async with self._lock:
            await self.create_table(await self._connection())

    @asynccontextmanager
    async def claim(self, limit: int) -> AsyncIterator[Claim]:
        t = self.table
        async with self._lock:
            conn = await self._connection()
            async with conn.transaction():
                records = await conn.fetch(f"{due_rows_sql(t, '$1', '$2')} FOR UPDATE OF o SKIP LOCKED", now(), limit)
                rows = [pending_row(r) for r in records]
                keys = list({r.message.ordering_key for r in rows if r.message.ordering_key is not None})
                if keys:
                    # rows another relay holds are invisible to SKIP LOCKED: do not overtake them
                    unsent = await conn.fetch(
                        f"""SELECT ordering_key, array_agg(seq ORDER BY seq) AS seqs FROM {t}
                            WHERE sent_at IS NULL AND ordering_key = ANY($1::text[]) AND seq <= $2
                            GROUP BY ordering_key""",
                        keys,
                        rows[-1].seq,
                    )
                    rows = keep_key_order(rows, {r["ordering_key"]: r["seqs"] for r in unsent})
                yield _PostgresClaim(conn, t, rows)

    async def wait_for_rows(self, timeout: float) -> None:
        """Wake on the insert trigger's NOTIFY; `timeout` is the fallback poll."""
        if self._listener is None or self._listener.is_closed():
            self._listener = await open_postgres(self.dsn)
            await self._listener.add_listener(self.channel, lambda *_: self._wake.set())
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def prune(self, older_than: float) -> int:
        async with self._lock:
            conn = await self._connection()
            status = await conn.execute(
                f"DELETE FROM {self.table} WHERE sent_at IS NOT NULL AND sent_at < $1", now() - older_than
            )
        return int(status.split()[-1])

    async def stats(self) -> OutboxStats:
        async with self._lock:
            conn = await self._connection()
            r = await conn.fetchrow(
                f"""SELECT
                    count(*) FILTER (WHERE sent_at IS NULL),
                    count(*) FILTER (WHERE sent_at IS NULL AND attempts > 0),
                    count(*) FILTER (WHERE sent_at IS NOT NULL),
                    min(created_at) FILTER (WHERE sent_at IS NULL)
                FROM {self.table}"""
            )
        oldest = r[3]
        return OutboxStats(r[0], r[1], r[2], None if oldest is None else max(0.0, now() - oldest))

    async def close(self) -> None:
        async with self._lock:
            for conn in (self._conn, self._listener):
                if conn is not None and not conn.is_closed():
                    await conn.close()
            self._conn = self._listener = None

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await open_postgres(self.dsn)
        return self._conn


class _PostgresClaim(Claim):
    """Updates run in the claim's transaction: they count only once it commits."""

    def __init__(self, conn: asyncpg.Connection, table: str, rows: list[PendingRow]) -> None:
        self._conn = conn
        self._table = table
        self.rows = rows

    async def sent(self, message_ids: Sequence[str]) -> None:
        await self._conn.execute(
            f"UPDATE {self._table} SET sent_at = $1 WHERE message_id = ANY($2::text[])", now(), list(message_ids)
        )

    async def failed(self, message_ids: Sequence[str], error: str, retry_in: float) -> None:
        await self._conn.execute(
            f"""UPDATE {self._table} SET attempts = attempts + 1, last_error = $1, next_attempt_at = $2
                WHERE message_id = ANY($3::text[])""",
            error[:2000],
            now() + retry_in,
            list(message_ids),
        )
