"""Orchestrated sagas: a sequence of steps, each a command sent to a participant over
the broker and a reply awaited, each with an optional command that undoes it.

    saga = Saga("order", steps=(
        Step("reserve", command="inventory.reserve", done=InventoryReserved,
             compensation="inventory.release", compensated=InventoryReleased),
        Step("charge", command="payment.charge", done=PaymentCompleted,
             compensation="payment.refund", compensated=PaymentRefunded, timeout=30),
    ))
    async with Orchestrator(saga, store, broker) as orchestrator:
        await orchestrator.begin("order-7", order.model_dump())

A participant handles a command like any message and answers with `reply(ctx, event)`.
A reply whose type is the step's `done` moves the saga on; any other type is a failure
and the completed steps are compensated in reverse order. A step with no reply within
its `timeout` counts as failed and is compensated too (its outcome is unknown, so its
own compensation runs as well). A compensation that fails or times out is sent again,
with backoff, until it succeeds: participants must make compensations idempotent, and
should refuse a late command for a saga they already compensated.

State is written to a `SagaStore` before each command goes out. An orchestrator that
restarts resends the outstanding command of every active saga (participants see a
duplicate, never a gap) with a fresh deadline, then carries on. The finished saga is
announced on `<saga>.finished` as a `SagaFinished` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from mailbag.broker import Broker, RetryPolicy, tracing
from mailbag.broker.clock import Clock
from mailbag.broker.outgoing import outgoing
from mailbag.workers.app import App
from mailbag.workers.context import Context
from mailbag.workers.errors import Reject
from mailbag.workers.runtime import Worker
from mailbag.workers.saga.store import SagaConflict, SagaState, SagaStore
from mailbag.workers.stores.memory import MemoryStore

log = logging.getLogger("mailbag.saga")

SAGA = "x-mailbag-saga"
SAGA_ID = "x-mailbag-saga-id"
SAGA_STEP = "x-mailbag-saga-step"
SAGA_PHASE = "x-mailbag-saga-phase"
REPLY_TO = "x-mailbag-reply-to"
#: the headers a participant echoes on its reply so the orchestrator can match it
SAGA_HEADERS = (SAGA, SAGA_ID, SAGA_STEP, SAGA_PHASE)

DO, UNDO = "do", "undo"

#: redelivery of replies the orchestrator could not take (store busy, conflicting write)
REPLY_RETRY = RetryPolicy(max_attempts=20, initial_delay=0.2, multiplier=2.0, max_delay=30.0)


def _type_name(kind: str | type | None) -> str | None:
    return kind if kind is None or isinstance(kind, str) else kind.__name__


@dataclass(frozen=True)
class Step:
    """One step: `command` is the topic its command goes to, `done` the reply type that
    means it succeeded. `compensation` is the topic of the command that undoes it and
    `compensated` the reply type that means the undo took effect."""

    name: str
    command: str
    done: str | type
    compensation: str | None = None
    compensated: str | type | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "done", _type_name(self.done))
        object.__setattr__(self, "compensated", _type_name(self.compensated))
        if (self.compensation is None) != (self.compensated is None):
            raise ValueError(f"step {self.name!r}: give both compensation and compensated, or neither")
        if self.timeout <= 0:
            raise ValueError(f"step {self.name!r}: timeout must be > 0, got {self.timeout}")


@dataclass(frozen=True)
class Saga:
    """The definition: a name (it prefixes the reply and finished topics) and its steps.
    A failed compensation is sent again after `backoff` seconds, doubling up to
    `max_backoff`, for as long as it takes."""

    name: str
    steps: tuple[Step, ...]
    backoff: float = 1.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        if not self.steps:
            raise ValueError(f"saga {self.name!r} needs at least one step")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"saga {self.name!r}: step names must be unique, got {names}")

    @property
    def reply_topic(self) -> str:
        return f"{self.name}.replies"

    @property
    def finished_topic(self) -> str:
        return f"{self.name}.finished"

    @property
    def command_topics(self) -> tuple[str, ...]:
        topics = [s.command for s in self.steps] + [s.compensation for s in self.steps if s.compensation]
        return tuple(dict.fromkeys(topics))

    def retry_delay(self, attempts: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** max(0, attempts - 1))


class SagaFinished(BaseModel):
    """Published on `<saga>.finished` once a saga completed or was compensated."""

    saga: str
    saga_id: str
    status: str
    reason: str | None = None
    data: dict[str, Any]


class WallClock:
    """Seconds since the epoch: saga deadlines are stored, and must mean the same
    after a restart (a monotonic clock restarts with the machine)."""

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.time()))

    def timeout(self, seconds: float | None) -> asyncio.Timeout:
        return asyncio.timeout(seconds)


async def reply(ctx: Context, event: Any) -> str:
    """Answer the saga command `ctx` is handling with `event` (a pydantic model: its
    class name is the reply type the orchestrator matches). Returns the reply's id."""
    headers = ctx.message.headers
    missing = [k for k in (REPLY_TO, *SAGA_HEADERS) if k not in headers]
    if missing:
        raise Reject(f"message {ctx.message_id} is not a saga command (no {missing[0]} header)")
    echoed = {k: headers[k] for k in SAGA_HEADERS}
    return await ctx.publish(str(headers[REPLY_TO]), event, key=str(headers[SAGA_ID]), stamp=echoed)


Listener = Callable[[SagaState, str], None]


class Orchestrator:
    """Runs sagas of one definition: consumes their replies (with its own worker),
    sends commands, fires deadlines every `tick` seconds of `clock`, and reports each
    transition to `listener(state, what)`.

    Entering it declares its topics, resends the outstanding commands of active sagas,
    then starts consuming. Declare the participants' queues first: on RabbitMQ and SNS a
    command published before its queue exists is lost (the deadline would catch it)."""

    def __init__(
        self,
        saga: Saga,
        store: SagaStore,
        broker: Broker,
        *,
        clock: Clock | None = None,
        tick: float = 0.5,
        concurrency: int = 10,
        listener: Listener | None = None,
    ) -> None:
        self.saga = saga
        self.store = store
        self.broker = broker
        self.clock: Clock = clock or WallClock()
        self.tick = tick
        self.listener = listener
        self.app = App(saga.name, topics=(*saga.command_topics, saga.finished_topic))
        # no idempotency record: the saga's state already tells a repeated reply (stale) apart,
        # so the worker needs no store of its own (none is opened on the host's disk)
        self.app.handler(saga.reply_topic, queue=saga.reply_topic, retry=REPLY_RETRY, idempotency=False)(self._on_reply)
        self._worker = Worker(self.app, broker, concurrency=concurrency, store=MemoryStore(), clock=self.clock)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._timer: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Orchestrator:
        await self.broker.declare(self.app.topology)
        await self.recover()
        await self._worker.start()
        self._timer = asyncio.create_task(self._fire_deadlines(), name=f"saga-deadlines:{self.saga.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        await self._worker.stop()

    async def begin(self, saga_id: str, data: dict[str, Any]) -> SagaState:
        """Start a saga with `data` (sent with every command, and grown by the replies).
        Beginning an id that exists changes nothing and returns its state."""
        async with self._lock(saga_id):
            fresh = SagaState(self.saga.name, saga_id, json.loads(json.dumps(data)))
            if not await self.store.insert(fresh):
                existing = await self.store.get(self.saga.name, saga_id)
                assert existing is not None
                return existing
            return await self._send(fresh)

    async def state(self, saga_id: str) -> SagaState | None:
        return await self.store.get(self.saga.name, saga_id)

    async def recover(self) -> int:
        """Resend the outstanding command of every active saga with a fresh deadline;
        the time this orchestrator was away is not the participant's fault."""
        active = await self.store.active(self.saga.name)
        for state in active:
            async with self._lock(state.id):
                await self._send(state, note="resent after restart")
        return len(active)

    async def expire(self) -> int:
        """Act on every deadline that has passed: a step timed out -> compensate; a
        compensation timed out or is due for a retry -> send it again."""
        acted = 0
        for due in await self.store.due(self.saga.name, self.clock.now()):
            async with self._lock(due.id):
                state = await self.store.get(self.saga.name, due.id)
                if state is None or not state.active or state.deadline is None or state.deadline > self.clock.now():
                    continue  # another transition got there first
                try:
                    if state.status == "running":
                        step = self.saga.steps[state.step]
                        await self._compensate(state, state.step, f"{step.name} timed out after {step.timeout:g}s")
                    else:
                        await self._send(state, note="compensation sent again")
                except SagaConflict as exc:
                    log.info("deadline skipped: %s", exc)
                    continue
                acted += 1
        return acted

    # -- transitions ----------------------------------------------------------

    async def _on_reply(self, payload: Any, ctx: Context) -> None:
        headers = ctx.message.headers
        saga_id = str(headers.get(SAGA_ID, ""))
        if headers.get(SAGA) != self.saga.name or not saga_id:
            raise Reject(f"not a reply of saga {self.saga.name!r} (headers {SAGA} / {SAGA_ID})")
        async with self._lock(saga_id):
            state = await self.store.get(self.saga.name, saga_id)
            if state is None:
                raise Reject(f"reply for unknown saga {self.saga.name}/{saga_id}")
            step = self.saga.steps[state.step] if state.active else None
            phase = DO if state.status == "running" else UNDO
            if step is None or headers.get(SAGA_STEP) != step.name or headers.get(SAGA_PHASE) != phase:
                log.info("stale reply ignored", extra={"saga_id": saga_id, "step": headers.get(SAGA_STEP)})
                return
            kind = ctx.message.type or "untyped reply"
            details = payload if isinstance(payload, dict) else {}
            if phase == DO and kind == step.done:
                await self._advance(state.evolve(data={**state.data, **details}), f"{step.name} done")
            elif phase == DO:
                why = f"{step.name} failed: {kind}" + (f" ({details['reason']})" if details.get("reason") else "")
                await self._compensate(state, state.step - 1, why)
            elif kind == step.compensated:
                self._report(state, f"{step.name} compensated")
                await self._compensate(state, state.step - 1, state.reason or "")
            else:
                delay = self.saga.retry_delay(state.attempts)
                waiting = await self.store.update(state.evolve(deadline=self.clock.now() + delay))
                self._report(waiting, f"compensating {step.name} failed ({kind}); again in {delay:g}s")

    async def _advance(self, state: SagaState, note: str) -> None:
        self._report(state, note)
        if state.step + 1 == len(self.saga.steps):
            await self._finish(state, "completed", None)
        else:
            await self._send(state.evolve(step=state.step + 1, attempts=0))

    async def _compensate(self, state: SagaState, from_step: int, reason: str) -> None:
        """Undo the latest step at or before `from_step` that has a compensation."""
        undo = next((i for i in range(from_step, -1, -1) if self.saga.steps[i].compensation), None)
        if undo is None:
            await self._finish(state, "compensated", reason)
        else:
            await self._send(state.evolve(status="compensating", step=undo, attempts=0, reason=reason))

    async def _send(self, state: SagaState, note: str = "") -> SagaState:
        """Save the saga with its command outstanding, then send the command."""
        step = self.saga.steps[state.step]
        phase, topic = (DO, step.command) if state.status == "running" else (UNDO, step.compensation)
        assert topic is not None
        saved = await self.store.update(
            state.evolve(attempts=state.attempts + 1, deadline=self.clock.now() + step.timeout)
        )
        command = outgoing(
            topic,
            saved.data,
            type_name=f"{self.saga.name}.{step.name}.{phase}",
            stamp={
                SAGA: self.saga.name,
                SAGA_ID: saved.id,
                SAGA_STEP: step.name,
                SAGA_PHASE: phase,
                REPLY_TO: self.saga.reply_topic,
            },
            correlation_id=saved.id,
            key=saved.id,
            max_size=self.broker.max_message_size,
        )
        with tracing.publishing(self.broker, topic, [command]) as traced:
            await self.broker.publish(topic, traced)
        verb = "sent" if phase == DO else "compensating"
        self._report(saved, f"{verb} {step.name} -> {topic}" + (f" ({note})" if note else ""))
        return saved

    async def _finish(self, state: SagaState, status: str, reason: str | None) -> None:
        """Announce, then save: a crash in between resends the last command on restart
        and announces again (at least once), where the other order could lose it."""
        final = state.evolve(status=status, deadline=None, reason=reason)
        event = SagaFinished(saga=self.saga.name, saga_id=state.id, status=status, reason=reason, data=state.data)
        announcement = outgoing(
            self.saga.finished_topic,
            event,
            correlation_id=state.id,
            key=state.id,
            max_size=self.broker.max_message_size,
        )
        with tracing.publishing(self.broker, self.saga.finished_topic, [announcement]) as traced:
            await self.broker.publish(self.saga.finished_topic, traced)
        saved = await self.store.update(final)
        self._report(saved, status + (f": {reason}" if reason else ""))

    # -- plumbing -------------------------------------------------------------

    def _lock(self, saga_id: str) -> asyncio.Lock:
        """One transition at a time per saga in this process (the store's version check
        covers other processes)."""
        lock = self._locks.get(saga_id)
        if lock is None:
            lock = self._locks[saga_id] = asyncio.Lock()
        return lock

    def _report(self, state: SagaState, what: str) -> None:
        log.info("saga %s/%s: %s", state.saga, state.id, what)
        if self.listener is not None:
            self.listener(state, what)

    async def _fire_deadlines(self) -> None:
        """Look for passed deadlines on a grid of `tick` seconds of the clock, so each
        is acted on within one tick of passing however the clock moves."""
        while True:
            await self.clock.sleep_until((math.floor(self.clock.now() / self.tick) + 1) * self.tick)
            try:
                await self.expire()
            except Exception:  # the store or broker is down: the next tick tries again
                log.exception("firing saga deadlines failed")
