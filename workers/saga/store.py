"""Where saga state lives between messages: one row per saga instance, written before
each command goes out, so an orchestrator that dies mid-saga resumes from it.

Two stores behind one small contract: SQLite (the default, a file beside the
orchestrator) and PostgreSQL (shared by several orchestrator processes). Every update
names the version it read; a concurrent writer makes it fail with `SagaConflict`
instead of silently overwriting a transition.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import aiosqlite

from mailbag.broker import mask_url
from mailbag.broker.errors import StoreError, StoreUnavailable, extras_named

Status = Literal["running", "compensating", "completed", "compensated"]

#: a saga in one of these still has a command outstanding (or a compensation to retry)
ACTIVE: tuple[Status, ...] = ("running", "compensating")

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class SagaConflict(StoreError):
    """Another writer changed the saga since it was read; read it again and re-decide."""


@dataclass(frozen=True)
class SagaState:
    """One saga instance. `step` is the index of the step whose command (while running)
    or compensation (while compensating) is outstanding; `deadline` is when the
    orchestrator stops waiting for its reply, in wall-clock seconds so it survives a
    restart; `attempts` counts sends of that command."""

    saga: str
    id: str
    data: dict[str, Any] = field(default_factory=dict)
    status: Status = "running"
    step: int = 0
    attempts: int = 0
    deadline: float | None = None
    reason: str | None = None
    version: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def evolve(self, **changes: Any) -> SagaState:
        return replace(self, **changes)


class SagaStore(Protocol):
    async def insert(self, state: SagaState) -> bool:
        """Store a new saga; False (and no change) if one with that id exists."""

    async def get(self, saga: str, saga_id: str) -> SagaState | None: ...

    async def update(self, state: SagaState) -> SagaState:
        """Write `state` over the stored version `state.version`; returns it with the
        version bumped. Raises `SagaConflict` if the stored version differs."""

    async def active(self, saga: str) -> list[SagaState]:
        """Every saga of that name still running or compensating."""

    async def due(self, saga: str, now: float) -> list[SagaState]:
        """Active sagas whose deadline is at or before `now`."""

    async def close(self) -> None: ...


_COLUMNS = "saga, id, status, step, attempts, deadline, reason, data, version"


def _row(state: SagaState) -> tuple[Any, ...]:
    return (
        state.saga,
        state.id,
        state.status,
        state.step,
        state.attempts,
        state.deadline,
        state.reason,
        json.dumps(state.data),
        state.version,
    )


def _state(row: Any) -> SagaState:
    saga, saga_id, status, step, attempts, deadline, reason, data, version = tuple(row)
    return SagaState(saga, saga_id, json.loads(data), status, step, attempts, deadline, reason, version)


def _schema(table: str, *, real: str, json: str) -> tuple[str, str]:
    """The table and its index, in the database's own types for floats and JSON."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (saga TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL,"
        f" step INTEGER NOT NULL, attempts INTEGER NOT NULL, deadline {real}, reason TEXT, data {json} NOT NULL,"
        " version INTEGER NOT NULL, PRIMARY KEY (saga, id))",
        f"CREATE INDEX IF NOT EXISTS {table}_active ON {table} (saga, status, deadline)",
    )


def _check_table(table: str) -> str:
    if not _TABLE.match(table):
        raise ValueError(f"invalid table name {table!r}: use letters, digits and '_'")
    return table


class SqliteSagaStore:
    """Saga state in a SQLite file (WAL mode, so a reader in another process never
    blocks the orchestrator). `:memory:` keeps it in the process only."""

    def __init__(self, db: aiosqlite.Connection, table: str) -> None:
        self._db = db
        self._table = table

    @classmethod
    async def open(cls, path: str, table: str = "saga_states") -> SqliteSagaStore:
        table = _check_table(table)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)  # autocommit: one statement, one transaction
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite saga store {path}: {exc} (does its folder exist?)"
            ) from None
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        for statement in _schema(table, real="REAL", json="TEXT"):
            await db.execute(statement)
        return cls(db, table)

    async def insert(self, state: SagaState) -> bool:
        cursor = await self._db.execute(
            f"INSERT INTO {self._table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            _row(state),
        )
        return cursor.rowcount == 1

    async def get(self, saga: str, saga_id: str) -> SagaState | None:
        async with self._db.execute(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE saga = ? AND id = ?", (saga, saga_id)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _state(row)

    async def update(self, state: SagaState) -> SagaState:
        new = state.evolve(version=state.version + 1)
        cursor = await self._db.execute(
            f"UPDATE {self._table} SET status = ?, step = ?, attempts = ?, deadline = ?, reason = ?, data = ?,"
            " version = ? WHERE saga = ? AND id = ? AND version = ?",
            (*_row(new)[2:], new.saga, new.id, state.version),
        )
        if cursor.rowcount != 1:
            raise SagaConflict(f"saga {state.saga}/{state.id} changed since version {state.version}")
        return new

    async def active(self, saga: str) -> list[SagaState]:
        return await self._select("saga = ? AND status IN ('running', 'compensating')", (saga,))

    async def due(self, saga: str, now: float) -> list[SagaState]:
        return await self._select("saga = ? AND status IN ('running', 'compensating') AND deadline <= ?", (saga, now))

    async def _select(self, where: str, params: tuple[Any, ...]) -> list[SagaState]:
        async with self._db.execute(f"SELECT {_COLUMNS} FROM {self._table} WHERE {where} ORDER BY id", params) as c:
            return [_state(row) for row in await c.fetchall()]

    async def close(self) -> None:
        await self._db.close()


class PostgresSagaStore:
    """Saga state in PostgreSQL, for orchestrators that share it across processes."""

    def __init__(self, pool: Any, table: str) -> None:
        self._pool = pool
        self._table = table

    @classmethod
    async def open(cls, dsn: str, table: str = "saga_states") -> PostgresSagaStore:
        with extras_named():
            import asyncpg  # the postgres extra; only this store needs it

        table = _check_table(table)
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConnectionError(f"cannot reach PostgreSQL at {mask_url(dsn)}: {exc}") from None
        async with pool.acquire() as conn:
            for statement in _schema(table, real="DOUBLE PRECISION", json="JSONB"):
                await conn.execute(statement)
        return cls(pool, table)

    async def insert(self, state: SagaState) -> bool:
        result = await self._pool.execute(
            f"INSERT INTO {self._table} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)"
            " ON CONFLICT DO NOTHING",
            *_row(state),
        )
        return result == "INSERT 0 1"

    async def get(self, saga: str, saga_id: str) -> SagaState | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE saga = $1 AND id = $2", saga, saga_id
        )
        return None if row is None else _state(row)

    async def update(self, state: SagaState) -> SagaState:
        new = state.evolve(version=state.version + 1)
        result = await self._pool.execute(
            f"UPDATE {self._table} SET status = $1, step = $2, attempts = $3, deadline = $4, reason = $5,"
            " data = $6::jsonb, version = $7 WHERE saga = $8 AND id = $9 AND version = $10",
            *_row(new)[2:],
            new.saga,
            new.id,
            state.version,
        )
        if result != "UPDATE 1":
            raise SagaConflict(f"saga {state.saga}/{state.id} changed since version {state.version}")
        return new

    async def active(self, saga: str) -> list[SagaState]:
        return await self._select("saga = $1 AND status IN ('running', 'compensating')", saga)

    async def due(self, saga: str, now: float) -> list[SagaState]:
        return await self._select("saga = $1 AND status IN ('running', 'compensating') AND deadline <= $2", saga, now)

    async def _select(self, where: str, *params: Any) -> list[SagaState]:
        rows = await self._pool.fetch(f"SELECT {_COLUMNS} FROM {self._table} WHERE {where} ORDER BY id", *params)
        return [_state(row) for row in rows]

    async def close(self) -> None:
        await self._pool.close()


async def open_store(url: str, table: str = "saga_states") -> SagaStore:
    """The store named by `url`: `sqlite:///relative.db` or `sqlite:////absolute/path.db`
    (as SQLAlchemy spells them), `sqlite://` (in memory), or `postgresql://user@host/db`."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        path = urlsplit(url).path
        return await SqliteSagaStore.open(path[1:] if path.startswith("/") else ":memory:", table)
    if scheme in ("postgresql", "postgres"):
        return await PostgresSagaStore.open(url, table)
    raise ValueError(f"unknown saga store URL {mask_url(url)!r}; expected sqlite:///path or postgresql://...")
