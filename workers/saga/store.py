"""Where saga state lives between messages: one row per saga instance, written before
each command goes out, so an orchestrator that dies mid-saga resumes from it.

Two stores behind one small contract: SQLite (the default, a file beside the
orchestrator) and PostgreSQL (shared by several orchestrator processes). Every update
names the version it read; a concurrent writer makes it fail with `SagaConflict`
instead of silently overwriting a transition.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import aiosqlite

from mailbag.broker.errors import StoreError
from mailbag.broker.storage import check_identifier, fetch_sqlite, open_postgres_pool, open_sqlite, parse_url

Status = Literal["running", "compensating", "completed", "compensated"]

#: a saga in one of these still has a command outstanding (or a compensation to retry)
ACTIVE: tuple[Status, ...] = ("running", "compensating")


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


class _SqlSagaStore(ABC):
    """The statements, written once; a backend runs them (`mark` is its parameter sign,
    numbered: `?1` in SQLite, `$1` in PostgreSQL)."""

    mark = "?"

    def __init__(self, table: str) -> None:
        t, p = table, self.mark
        self._insert = (
            f"INSERT INTO {t} ({_COLUMNS}) VALUES ({', '.join(f'{p}{i}' for i in range(1, 10))}) ON CONFLICT DO NOTHING"
        )
        self._get = f"SELECT {_COLUMNS} FROM {t} WHERE saga = {p}1 AND id = {p}2"
        self._update = (
            f"UPDATE {t} SET status = {p}1, step = {p}2, attempts = {p}3, deadline = {p}4, reason = {p}5,"
            f" data = {p}6, version = {p}7 WHERE saga = {p}8 AND id = {p}9 AND version = {p}10"
        )
        active = f"SELECT {_COLUMNS} FROM {t} WHERE saga = {p}1 AND status IN ('running', 'compensating')"
        self._active = f"{active} ORDER BY id"
        self._due = f"{active} AND deadline <= {p}2 ORDER BY id"

    @abstractmethod
    async def _write(self, sql: str, *args: Any) -> int:
        """Run a statement; how many rows it changed."""

    @abstractmethod
    async def _read(self, sql: str, *args: Any) -> list[Any]: ...

    async def insert(self, state: SagaState) -> bool:
        return await self._write(self._insert, *_row(state)) == 1

    async def get(self, saga: str, saga_id: str) -> SagaState | None:
        rows = await self._read(self._get, saga, saga_id)
        return _state(rows[0]) if rows else None

    async def update(self, state: SagaState) -> SagaState:
        new = state.evolve(version=state.version + 1)
        if await self._write(self._update, *_row(new)[2:], new.saga, new.id, state.version) != 1:
            raise SagaConflict(f"saga {state.saga}/{state.id} changed since version {state.version}")
        return new

    async def active(self, saga: str) -> list[SagaState]:
        return [_state(row) for row in await self._read(self._active, saga)]

    async def due(self, saga: str, now: float) -> list[SagaState]:
        return [_state(row) for row in await self._read(self._due, saga, now)]


class SqliteSagaStore(_SqlSagaStore):
    """Saga state in a SQLite file (WAL mode, so a reader in another process never
    blocks the orchestrator). `:memory:` keeps it in the process only."""

    def __init__(self, db: aiosqlite.Connection, table: str) -> None:
        super().__init__(table)
        self._db = db

    @classmethod
    async def open(cls, path: str, table: str = "saga_states") -> SqliteSagaStore:
        table = check_identifier(table, "saga table")
        db = await open_sqlite(path)  # autocommit: one statement, one transaction
        for statement in _schema(table, real="REAL", json="TEXT"):
            await db.execute(statement)
        return cls(db, table)

    async def _write(self, sql: str, *args: Any) -> int:
        async with self._db.execute(sql, args) as cursor:
            return cursor.rowcount

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        return await fetch_sqlite(self._db, sql, *args)

    async def close(self) -> None:
        await self._db.close()


class PostgresSagaStore(_SqlSagaStore):
    """Saga state in PostgreSQL, for orchestrators that share it across processes
    (JSONB data; asyncpg passes it as JSON text both ways)."""

    mark = "$"

    def __init__(self, pool: Any, table: str) -> None:
        super().__init__(table)
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, table: str = "saga_states") -> PostgresSagaStore:
        table = check_identifier(table, "saga table")
        pool = await open_postgres_pool(dsn, max_size=4)
        async with pool.acquire() as conn:
            for statement in _schema(table, real="DOUBLE PRECISION", json="JSONB"):
                await conn.execute(statement)
        return cls(pool, table)

    async def _write(self, sql: str, *args: Any) -> int:
        status = await self._pool.execute(sql, *args)  # e.g. "UPDATE 1", "INSERT 0 1"
        return int(status.split()[-1])

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._pool.fetch(sql, *args))

    async def close(self) -> None:
        await self._pool.close()


async def open_store(url: str, table: str = "saga_states") -> SagaStore:
    """The store named by `url`: `sqlite:///relative.db`, `sqlite:////absolute.db` or
    `sqlite://` (in memory), as SQLAlchemy reads them, or `postgresql://user@host/db`."""
    parsed = parse_url(url, own=(), what="saga store")
    if parsed.sqlite:
        return await SqliteSagaStore.open(parsed.target, table)
    return await PostgresSagaStore.open(parsed.target, table)
