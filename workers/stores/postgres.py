"""The PostgreSQL idempotency store (`postgresql://user@host/db?table=...&pool=10`).

Records are shared by every worker that reaches the database. In transactional mode
the handler gets a pooled asyncpg connection inside the open transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg

from mailbag.broker.url import mask_url, query_options
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore

#: our options in the URL; the rest of the query goes to asyncpg
_OWN_OPTIONS = ("table", "pool")


class PostgresStore(SqlStore):
    mark = "$"

    def __init__(self, pool: asyncpg.Pool, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self.pool.acquire()
        try:
            yield conn
        finally:
            await self.pool.release(conn)  # asyncpg resets it (rolls back), or closes a broken one

    async def fetch(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.fetch(sql, *args)]

    async def begin(self, conn: asyncpg.Connection) -> None:
        await conn.execute("BEGIN")

    async def end(self, conn: asyncpg.Connection, commit: bool) -> None:
        await conn.execute("COMMIT" if commit else "ROLLBACK")

    async def close(self) -> None:
        await self.pool.close()


async def open_store(url: str) -> PostgresStore:
    options = query_options(url)
    parts = urlsplit(url)
    rest = {k: v for k, v in options.items() if k not in _OWN_OPTIONS}
    dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest)))
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=int(options.get("pool", 10)))
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConnectionError(f"cannot reach PostgreSQL at {mask_url(url)}: {exc}") from None
    store = PostgresStore(pool, table=options.get("table", DEFAULT_TABLE))
    await store.setup()
    return store
