"""What the SQL stores (SQLite, PostgreSQL) share: one table, and the statements and
steps that claim, complete and release a key in it, in a transaction or not.

A record is (key, token, outcome, expires_at); outcome NULL means a run holds it.
Claiming is one atomic upsert that only overwrites an expired record, so no lock is
held between statements. In a transaction, the upsert of a key another open
transaction has written waits for that one to end: a concurrent duplicate waits, then
sees the outcome.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from mailbag.broker.storage import check_identifier
from mailbag.workers.stores import Claim, Transaction, TransactionalStore, new_token

DEFAULT_TABLE = "mailbag_idempotency"

#: a claim whose record vanished between two statements asks again this soon
_RACE_RETRY = 0.05


class SqlStore(TransactionalStore):
    """Subclasses say how to reach the database; statements use `$1`-style numbered
    parameters, written with `mark` (`$` for PostgreSQL, `?` for SQLite)."""

    mark = "$"
    #: opens a transaction that writes (SQLite's IMMEDIATE takes the write lock at once)
    sql_begin = "BEGIN"
    #: how often expired records are swept out, in seconds
    SWEEP_EVERY = 600.0

    def __init__(self, table: str = DEFAULT_TABLE, clock: Callable[[], float] = time.time) -> None:
        self.table = check_identifier(table, "idempotency table")
        self.clock = clock
        self._next_sweep = 0.0
        t, p = table, self.mark
        self.sql_create = (
            f"CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, token TEXT NOT NULL, "
            f"outcome TEXT, expires_at DOUBLE PRECISION NOT NULL)"
        )
        self.sql_take = (
            f"INSERT INTO {t} (key, token, outcome, expires_at) VALUES ({p}1, {p}2, NULL, {p}3) "
            f"ON CONFLICT (key) DO UPDATE SET token = excluded.token, outcome = NULL, "
            f"expires_at = excluded.expires_at WHERE {t}.expires_at <= {p}4 RETURNING token"
        )
        self.sql_read = f"SELECT outcome, expires_at FROM {t} WHERE key = {p}1"
        self.sql_complete = f"UPDATE {t} SET outcome = {p}1, expires_at = {p}2 WHERE key = {p}3 AND token = {p}4"
        self.sql_release = f"DELETE FROM {t} WHERE key = {p}1 AND token = {p}2"
        self.sql_sweep = f"DELETE FROM {t} WHERE expires_at <= {p}1"

    # -- what a backend provides ------------------------------------------------

    @abstractmethod
    def connection(self) -> Any:
        """`async with` a connection in autocommit mode. One that saw an error (a
        transaction cut short) is reset or closed before anyone reuses it."""

    @abstractmethod
    async def fetch(self, conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    async def begin(self, conn: Any) -> None:
        await self.fetch(conn, self.sql_begin)

    async def end(self, conn: Any, commit: bool) -> None:
        await self.fetch(conn, "COMMIT" if commit else "ROLLBACK")

    # -- the contract -----------------------------------------------------------

    async def setup(self) -> None:
        async with self.connection() as conn:
            await self.fetch(conn, self.sql_create)

    async def claim(self, key: str, lease: float) -> Claim:
        async with self.connection() as conn:
            await self._sweep_now_and_then(conn)
            return await self._claim(conn, key, lease)

    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        async with self.connection() as conn:
            await self.fetch(conn, self.sql_complete, outcome, self.clock() + ttl, key, token)

    async def release(self, key: str, token: str) -> None:
        async with self.connection() as conn:
            await self.fetch(conn, self.sql_release, key, token)

    @asynccontextmanager
    async def transaction(self, key: str, ttl: float) -> AsyncIterator[Transaction]:
        async with self.connection() as conn:
            await self.begin(conn)
            try:
                claim = await self._claim(conn, key, ttl)
                record = partial(self.fetch, conn, self.sql_complete)
                yield Transaction(claim, conn, lambda outcome: record(outcome, self.clock() + ttl, key, claim.token))
            except BaseException:
                await self.end(conn, commit=False)
                raise
            await self.end(conn, commit=True)

    # -- steps ------------------------------------------------------------------

    async def _claim(self, conn: Any, key: str, lease: float) -> Claim:
        now, token = self.clock(), new_token()
        if await self.fetch(conn, self.sql_take, key, token, now + lease, now):
            return Claim("claimed", token)
        rows = await self.fetch(conn, self.sql_read, key)
        if not rows:
            return Claim("busy", retry_in=_RACE_RETRY)
        outcome, expires_at = rows[0]
        if outcome is not None:
            return Claim("done", outcome=outcome)
        return Claim("busy", retry_in=max(_RACE_RETRY, expires_at - now))

    async def _sweep_now_and_then(self, conn: Any) -> None:
        now = self.clock()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY
            await self.fetch(conn, self.sql_sweep, now)
