"""Orchestrated sagas: steps sent as commands over the broker, replies awaited, and
compensations run newest first when a step fails (`orchestrator`), with their state
kept between messages in SQLite or PostgreSQL (`store`)."""

from mailbag.workers.saga.orchestrator import (
    SAGA,
    SAGA_HEADERS,
    SAGA_ID,
    SAGA_PHASE,
    SAGA_STEP,
    Orchestrator,
    Saga,
    SagaFinished,
    Step,
    reply,
)
from mailbag.workers.saga.store import SagaConflict, SagaState, SagaStore, open_store

__all__ = [
    "SAGA",
    "SAGA_HEADERS",
    "SAGA_ID",
    "SAGA_PHASE",
    "SAGA_STEP",
    "Orchestrator",
    "Saga",
    "SagaConflict",
    "SagaFinished",
    "SagaState",
    "SagaStore",
    "Step",
    "open_store",
    "reply",
]
