"""The SQLite idempotency store (`sqlite:///path.db`), the default on one host.

Every process on the host that opens the same file shares the records (WAL mode, a
busy timeout instead of errors under contention). In transactional mode the handler
writes through the store's connection into the same file, and `BEGIN IMMEDIATE`
makes concurrent transactions take turns.

SQLite has one writer: the store serialises transactional handlers, one transaction at
a time per store, queued in the process rather than in `busy_timeout` (which would turn
a long queue into "database is locked" errors). A lock still held by another process
past the busy timeout raises, and the worker retries the message. For transactional
handlers that should run concurrently, use PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite

from mailbag.broker.url import query_options
from mailbag.workers.stores import Transaction
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore

BUSY_TIMEOUT_MS = 30_000


class SqliteStore(SqlStore):
    mark = "?"

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.path = str(path)
        self._idle: list[aiosqlite.Connection] = []
        self._open: set[aiosqlite.Connection] = set()
        self._writer = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode = WAL")
        self._open.add(conn)
        return conn

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._idle.pop() if self._idle else await self._connect()
        try:
            yield conn
        except BaseException:
            self._open.discard(conn)
            await conn.close()
            raise
        self._idle.append(conn)

    @asynccontextmanager
    async def transaction(self, key: str, ttl: float) -> AsyncIterator[Transaction]:
        """One transaction at a time (see the module docstring)."""
        async with self._writer, super().transaction(key, ttl) as txn:
            yield txn

    async def fetch(self, conn: aiosqlite.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with conn.execute(sql, args) as cursor:
            return list(await cursor.fetchall())

    async def begin(self, conn: aiosqlite.Connection) -> None:
        await conn.execute("BEGIN IMMEDIATE")

    async def end(self, conn: aiosqlite.Connection, commit: bool) -> None:
        await conn.execute("COMMIT" if commit else "ROLLBACK")

    async def close(self) -> None:
        self._idle.clear()
        while self._open:
            await self._open.pop().close()


async def open_store(url: str) -> SqliteStore:
    path = urlsplit(url).path[1:] or "mailbag-idempotency.sqlite3"
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(path, table=query_options(url).get("table", DEFAULT_TABLE))
    await store.setup()
    return store
