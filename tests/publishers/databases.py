"""An order service's database for the outbox tests, on SQLite or PostgreSQL: each
order is a business row and its event, written in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mailbag.publishers.outbox import Outbox, PostgresOutbox, SqliteOutbox

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"


class SqliteOrders:
    def __init__(self, path: Path) -> None:
        self.url = f"sqlite:///{path}"  # four slashes in all: an absolute path
        self.table = "outbox"
        self.outbox = SqliteOutbox(str(path), table=self.table)
        self.conn = sqlite3.connect(path)
        self.conn.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        self.outbox.create_table(self.conn)

    def open_outbox(self, **options: Any) -> Outbox:
        """Another outbox object on the same table, as another relay process has."""
        return SqliteOutbox(self.outbox.path, table=self.table, **options)

    async def place(
        self, order_id: str, topic: str, payload: Any, key: str | None = None, *, fail: bool = False
    ) -> str:
        try:
            with self.conn:
                self.conn.execute("INSERT INTO orders (id) VALUES (?)", (order_id,))
                message_id = self.outbox.add(self.conn, topic, payload, key=key)
                if fail:
                    raise RuntimeError("the business change failed")
        except RuntimeError:
            return ""
        return message_id

    async def orders(self) -> int:
        return self.conn.execute("SELECT count(*) FROM orders").fetchone()[0]

    async def close(self) -> None:
        self.conn.close()
        await self.outbox.close()


class PostgresOrders:
    def __init__(self, schema: str) -> None:
        self.url = PG_DSN
        self.table = f"{schema}.outbox"
        self.schema = schema
        self.outbox = PostgresOutbox(PG_DSN, table=self.table)
        self.conn: Any = None

    async def start(self) -> PostgresOrders:
        import asyncpg

        self.conn = await asyncpg.connect(PG_DSN)
        await self.conn.execute(f"CREATE TABLE {self.schema}.orders (id TEXT PRIMARY KEY)")
        await self.outbox.create_table(self.conn)
        return self

    def open_outbox(self, **options: Any) -> Outbox:
        return PostgresOutbox(PG_DSN, table=self.table, **options)

    async def place(
        self, order_id: str, topic: str, payload: Any, key: str | None = None, *, fail: bool = False
    ) -> str:
        try:
            async with self.conn.transaction():
                await self.conn.execute(f"INSERT INTO {self.schema}.orders (id) VALUES ($1)", order_id)
                message_id = await self.outbox.add(self.conn, topic, payload, key=key)
                if fail:
                    raise RuntimeError("the business change failed")
        except RuntimeError:
            return ""
        return message_id

    async def orders(self) -> int:
        return await self.conn.fetchval(f"SELECT count(*) FROM {self.schema}.orders")

    async def close(self) -> None:
        await self.conn.close()
        await self.outbox.close()


@asynccontextmanager
async def orders_db(kind: str, tmp_path: Path, pg_schema: str | None) -> AsyncIterator[SqliteOrders | PostgresOrders]:
    db = SqliteOrders(tmp_path / "orders.db") if kind == "sqlite" else await PostgresOrders(pg_schema).start()
    try:
        yield db
    finally:
        await db.close()
