"""The SQLite idempotency store (`sqlite:///path.db`), the default on one host.

Every process on the host that opens the same file shares the records (WAL mode, a
busy timeout instead of errors under contention; see `mailbag.broker.storage`). In
transactional mode the handler writes through the store's connection into the same
file, and `BEGIN IMMEDIATE` makes concurrent transactions take turns.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from mailbag.broker.storage import SqliteConnections, SqliteThread, fetch_sqlite, parse_url
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore, Steps


class SqliteStore(SqlStore):
    mark = "?"
    sql_begin = "BEGIN IMMEDIATE"
    errors = (sqlite3.Error, OSError)

    def __init__(self, path: str | Path, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.path = str(path)
        self._connections = SqliteConnections(self.path)
        self._writer_thread = SqliteThread(self.path)

    async def write_batch(self, steps: Steps[list[Any]]) -> list[Any]:
        """The whole batch in one hand-off to the writer's thread."""
        return await self._writer_thread.run(partial(_write, self.sql_begin, steps))

    def connection(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        return self._connections.connection()

    async def fetch(self, conn: aiosqlite.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await fetch_sqlite(conn, sql, *args)

    async def close(self) -> None:
        await super().close()
        await self._writer_thread.close()
        await self._connections.close()


def _write(begin: str, steps: Steps[list[Any]], conn: sqlite3.Connection) -> list[Any]:
    """Run a batch's statements in one transaction on a blocking connection."""
    conn.execute(begin)
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
