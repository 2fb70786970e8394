"""Idempotency stores: where a worker records which messages it has handled, so a
duplicate delivery returns the recorded outcome instead of running the handler again.

The contract is `IdempotencyStore` (claim / complete / release); `TransactionalStore`
adds a transaction the handler writes in, which commits the record with its writes.
One module per backend: `memory`, `sqlite` (the default on one host), `redis`,
`postgres`, `dynamodb`; `open_store(url)` picks one by URL scheme. The SQL-specific
statements shared by SQLite and PostgreSQL live in `sql`.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from mailbag.broker.errors import ConfigurationError
from mailbag.broker.url import mask_url


class Claim(NamedTuple):
    """The answer to `claim`: `claimed` (run the handler, then `complete` or `release`
    with `token`), `done` (a previous run recorded `outcome`), or `busy` (another run
    holds the key; ask again in `retry_in` seconds)."""

    status: Literal["claimed", "done", "busy"]
    token: str = ""
    outcome: str | None = None
    retry_in: float = 0.0


def new_token() -> str:
    """A claim's owner mark: random, unique enough, and cheap (one per message)."""
    return os.urandom(12).hex()


class IdempotencyStore(ABC):
    """Records per key: running (with a lease) or done (with an outcome, kept `ttl`
    seconds). Safe to share between tasks and between processes that use the same
    backend. Times are wall-clock seconds, so processes on one host agree."""

    @abstractmethod
    async def claim(self, key: str, lease: float) -> Claim:
        """Atomically take `key` for `lease` seconds unless a live record holds it. A
        running record whose lease ran out belongs to a run that died: it is taken over."""

    @abstractmethod
    async def complete(self, key: str, token: str, outcome: str, ttl: float) -> None:
        """Record the outcome (JSON text) of the run holding `token`, kept for `ttl` seconds."""

    @abstractmethod
    async def release(self, key: str, token: str) -> None:
        """Drop the claim of a run that failed, so the next delivery runs again."""

    async def close(self) -> None:  # noqa: B027 - stores without connections need nothing
        """Close connections. Idempotent."""


@dataclass
class Transaction:
    """An open transaction holding one key. `claim` says what to do: `claimed` -> the
    handler writes through `connection`, then the caller `record`s the outcome and it
    all commits together; `done` -> an earlier run committed `claim.outcome`; `busy`
    -> a run outside any transaction holds the key."""

    claim: Claim
    connection: Any
    record: Callable[[str], Awaitable[Any]]


class TransactionalStore(IdempotencyStore):
    """A store in the handler's own database (SQLite, PostgreSQL)."""

    @abstractmethod
    def transaction(self, key: str, ttl: float) -> AbstractAsyncContextManager[Transaction]:
        """Begin a transaction holding `key` (a concurrent run of the same key waits for
        it). Leaving without an error commits; an error or cancellation rolls back, so
        a crash before the commit leaves neither the writes nor the record."""


#: URL scheme -> "module:factory"; the factory is `async (url) -> IdempotencyStore`
STORES = {
    "memory": "mailbag.workers.stores.memory:open_store",
    "sqlite": "mailbag.workers.stores.sqlite:open_store",
    "redis": "mailbag.workers.stores.redis:open_store",
    "rediss": "mailbag.workers.stores.redis:open_store",
    "postgres": "mailbag.workers.stores.postgres:open_store",
    "postgresql": "mailbag.workers.stores.postgres:open_store",
    "dynamodb": "mailbag.workers.stores.dynamodb:open_store",
}


async def open_store(url: str) -> IdempotencyStore:
    """The store named by `url`: `memory://`, `sqlite:///relative.db` or
    `sqlite:////absolute.db` (SQLAlchemy's meaning, see `mailbag.broker.storage`),
    `redis://host:6379/0`, `postgresql://user@host/db`,
    `dynamodb://TABLE?region=...&endpoint_url=...`."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = STORES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in STORES)
        raise ConfigurationError(f"unknown idempotency store URL {mask_url(url)!r}; expected one of {known}")
    module_name, factory = target.split(":")
    return await getattr(importlib.import_module(module_name), factory)(url)
