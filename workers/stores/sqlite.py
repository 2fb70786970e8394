"""The SQLite idempotency store (`sqlite:///path.db`), the default on one host.

Every process on the host that opens the same file shares the records (WAL mode, a
busy timeout instead of errors under contention; see `mailbag.broker.storage`). In
transactional mode the handler writes through the store's connection into the same
file, and `BEGIN IMMEDIATE` makes concurrent transactions take turns.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiosqlite

from mailbag.broker.storage import SqliteConnections, fetch_sqlite, parse_url
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore


class SqliteStore(SqlStore):
    mark = "?"
    sql_begin = "BEGIN IMMEDIATE"

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.path = str(path)
        self._connections = SqliteConnections(self.path)

    def connection(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self._connections.connection()

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
