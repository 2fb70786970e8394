"""The PostgreSQL idempotency store (`postgresql://user@host/db?table=...&pool=10`).

Records are shared by every worker that reaches the database. In transactional mode
the handler gets a pooled asyncpg connection inside the open transaction.

A connection that saw a client-side failure (cut mid-statement, killed by the server,
its operation cancelled) is in a state nobody can vouch for: it is terminated, never
handed out again, and the pool opens a fresh one, so the store recovers by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from mailbag.broker.errors import ConfigurationError
from mailbag.broker.storage import open_postgres_pool, parse_url
from mailbag.workers.stores.sql import DEFAULT_TABLE, SqlStore

#: failures after which a connection is terminated rather than reused (see the module text)
BROKEN = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)


class PostgresStore(SqlStore):
    mark = "$"
    errors = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

    def __init__(self, pool: asyncpg.Pool, table: str = DEFAULT_TABLE, **kw: Any) -> None:
        super().__init__(table, **kw)
        self.pool = pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await self.pool.acquire()
        try:
            yield conn
        except BROKEN:
            conn.terminate()
            raise
        finally:
            await self.pool.release(conn)  # asyncpg resets it (rolls back), or closes a broken one

    async def fetch(self, conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await conn.fetch(sql, *args)]

    async def close(self) -> None:
        await super().close()
        await self.pool.close()


async def open_store(url: str) -> PostgresStore:
    """`postgresql://user@host/db?table=...&pool=10`; other query options go to asyncpg."""
    parsed = parse_url(url, own=("table", "pool"), what="idempotency store")
    pool_size = parsed.options.get("pool", "10")
    if not pool_size.isdigit() or int(pool_size) < 1:
        raise ConfigurationError(f"the idempotency store's pool= must be a whole number >= 1, not {pool_size!r}")
    pool = await open_postgres_pool(parsed.target, max_size=int(pool_size))
    store = PostgresStore(pool, table=parsed.options.get("table", DEFAULT_TABLE))
    await store.setup()
    return store
