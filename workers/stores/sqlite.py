"""The SQLite idempotency store (`sqlite:///path.db`), the default on one host.

Every process on the host that opens the same file shares the records (WAL mode, a
busy timeout instead of errors under contention; see `mailbag.broker.storage`). In
transactional mode the handler writes through the store's connection into the same
file, and `BEGIN IMMEDIATE` makes concurrent transactions take turns.

SQLite has one writer: the store serialises transactional handlers, one transaction at
a time per store, queued in the process rather than in `busy_timeout` (which would turn
a long queue into "database is locked" errors). A lock still held by another process
past the busy timeout raises, and the worker retries the message. For transactional
handlers that should run concurrently, use PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from mailbag.broker.storage import SqliteConnections, fetch_sqlite, parse_url
from mailbag.workers.stores import Transaction
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore


class SqliteStore(SqlStore):
    mark = "?"
    sql_begin = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.path = str(path)
        self._connections = SqliteConnections(self.path)
        self._writer = asyncio.Lock()

    def connection(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self._connections.connection()

    @asynccontextmanager
    async def transaction(self, key: str, ttl: float) -> AsyncIterator[Transaction]:
        """One transaction at a time (see the module docstring)."""
        async with self._writer, super().transaction(key, ttl) as txn:
            yield txn

    async def fetch(self, conn: aiosqlite.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await fetch_sqlite(conn, sql, *args)

    async def close(self) -> None:
        await self._connections.close()


async def open_store(url: str) -> SqliteStore:
    """`sqlite:///relative.db` or `sqlite:////absolute.db` (SQLAlchemy's meaning), `?table=`."""
    parsed = parse_url(url, what="idempotency store")
    store = SqliteStore(parsed.target, table=parsed.options.get("table", DEFAULT_TABLE))
    await store.setup()
    return store
