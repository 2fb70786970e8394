"""Fixtures for the saga tests: a memory broker and the saga on one manual clock (so
deadlines and backoff are moved by hand, never waited for), and every saga store on
its real backend (SQLite files, PostgreSQL on 127.0.0.1:5432), cleaned up after."""

from __future__ import annotations

import socket
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from mailbag.examples.orders.events import Topics
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Shop
from mailbag.workers import Worker
from mailbag.workers.saga import Orchestrator, Saga
from mailbag.workers.saga.store import SagaStore, open_store

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def require_postgres() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=2).close()
    except OSError:
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; start it with `scripts/services.sh`", pytrace=False)


@asynccontextmanager
async def saga_store(kind: str, tmp_path):
    table = f"sagas_{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        store = await open_store(f"sqlite:///{tmp_path / 'sagas.db'}", table)
    else:
        require_postgres()
        store = await open_store(POSTGRES_URL, table)
    try:
        yield store
    finally:
        if kind == "postgres":
            await store._pool.execute(f"DROP TABLE IF EXISTS {table}")
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path):
    async with saga_store(request.param, tmp_path) as s:
        yield s


@dataclass
class Flow:
    """The order saga on a memory broker: participants, orchestrator, and what it did."""

    broker: MemoryBroker
    clock: ManualClock
    store: SagaStore
    shop: Shop
    saga: Saga
    orchestrator: Orchestrator | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def of(self, saga_id: str) -> list[str]:
        return [what for sid, what in self.events if sid == saga_id]

    @asynccontextmanager
    async def running(self, *, participants: bool = True):
        async with Worker(build_participants(self.shop, self.saga), self.broker) if participants else _nothing():
            orchestrator = Orchestrator(
                self.saga,
                self.store,
                self.broker,
                clock=self.clock,
                listener=lambda state, what: self.events.append((state.id, what)),
            )
            async with orchestrator:
                self.orchestrator = orchestrator
                yield orchestrator

    async def statuses(self, *ids: str) -> dict[str, str]:
        return {i: (await self.store.get(self.saga.name, i)).status for i in ids}


@asynccontextmanager
async def _nothing():
    yield


@pytest.fixture
async def flow(tmp_path):
    clock = ManualClock(start=1_000_000.0)
    broker = MemoryBroker(clock=clock)
    store = await open_store(f"sqlite:///{tmp_path / 'sagas.db'}")
    try:
        yield Flow(broker, clock, store, Shop(), order_saga(Topics()))
    finally:
        await broker.close()
        await store.close()
