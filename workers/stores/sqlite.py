"""The SQLite idempotency store (`sqlite:///path.db`), the default on one host.

Every process on the host that opens the same file shares the records (WAL mode, a
busy timeout instead of errors under contention; see `mailbag.broker.storage`). In
transactional mode the handler writes through the store's connection into the same
file, and `BEGIN IMMEDIATE` makes concurrent transactions take turns.

Records of ordinary (not transactional) handlers are written in batches (see `sql`)
with `synchronous=NORMAL`: a commit is in the write-ahead log, safe from a crash of
the process, but the log is flushed to disk only at checkpoints. What a power cut or
an OS crash can cost: the records of the last moments before it (up to the last
checkpoint, typically a second or less at load, at most the OS's writeback delay).
Their messages were acknowledged, so the broker does not deliver them again; only a
duplicate published or redelivered later would run again, as it would with no
record. Transactional handlers keep `synchronous=FULL`: their writes and record are
on disk before the message is acknowledged, so nothing is applied twice or lost.

A batch runs on the event loop's own thread when the write lock is free (a few tens
of microseconds without a flush, no thread hand-offs), and otherwise on the writer
thread, which waits for the lock: the loop never waits for a lock that a
transactional handler on the same loop holds. Checkpoints run on that thread too.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import AbstractAsyncContextManager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from mailbag.broker.errors import StoreError
from mailbag.broker.storage import SqliteConnections, SqliteThread, connect_blocking, fetch_sqlite, parse_url
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore, Steps


class SqliteStore(SqlStore):
    mark = "?"
    sql_begin = "BEGIN IMMEDIATE"
    errors = (sqlite3.Error, OSError)
    #: how the batches' records reach the disk (see the module text)
    SYNCHRONOUS = "NORMAL"
    #: batches written on the loop's thread between two checkpoints (its connection
    #: never checkpoints by itself, which would flush the disk on the loop)
    CHECKPOINT_EVERY = 500

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.path = str(path)
        self._connections = SqliteConnections(self.path)
        self._writer_thread = SqliteThread(self.path, synchronous=self.SYNCHRONOUS)
        self._inline: sqlite3.Connection | None = None
        self._since_checkpoint = 0
        self._checkpoint: asyncio.Future[None] | None = None

    async def write_batch(self, steps: Steps[list[Any]]) -> list[Any]:
        """The batch on the loop's thread if the write lock is free now, else on the
        writer thread (see the module text)."""
        if self._inline is None:
            self._inline = connect_blocking(self.path, synchronous=self.SYNCHRONOUS, busy_timeout=0)
            self._inline.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            answers = _write(self.sql_begin, steps, self._inline)
        except _LockTaken:
            return await self._writer_thread.run(partial(_write, self.sql_begin, steps))
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.CHECKPOINT_EVERY and (self._checkpoint is None or self._checkpoint.done()):
            self._since_checkpoint = 0
            self._checkpoint = asyncio.ensure_future(self._writer_thread.run(_checkpoint))
        return answers

    def connection(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self._connections.connection()

    async def fetch(self, conn: aiosqlite.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await fetch_sqlite(conn, sql, *args)

    async def close(self) -> None:
        await super().close()
        if self._checkpoint is not None:
            with suppress(sqlite3.Error):
                await self._checkpoint
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._writer_thread.close()
        await self._connections.close()


class _LockTaken(StoreError, sqlite3.OperationalError):
    """Another connection holds the write lock; nothing of the batch ran."""


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the write-ahead log into the database file (and flush both), without
    waiting for readers or writers."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _write(begin: str, steps: Steps[list[Any]], conn: sqlite3.Connection) -> list[Any]:
    """Run a batch's statements in one transaction on a blocking connection."""
    try:
        conn.execute(begin)
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
            raise _LockTaken(str(exc)) from None
        raise
    try:
        rows: list[tuple[Any, ...]] | None = None
        while True:
            sql, args = steps.send(rows)
            rows = conn.execute(sql, args).fetchall()
    except StopIteration as stop:
        conn.execute("COMMIT")
        answers: list[Any] = stop.value
        return answers
    except BaseException:
        conn.execute("ROLLBACK")
        raise


async def open_store(url: str) -> SqliteStore:
    """`sqlite:///relative.db` or `sqlite:////absolute.db` (SQLAlchemy's meaning), `?table=`."""
    parsed = parse_url(url, what="idempotency store")
    store = SqliteStore(parsed.target, table=parsed.options.get("table", DEFAULT_TABLE))
    await store.setup()
    return store
