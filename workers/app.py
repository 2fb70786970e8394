"""The handler registry: which function handles which topic on which queue, with what
options, and the topology that follows from it."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mailbag.broker import Queue, RetryPolicy, Subscription, Topology, TopologyError
from mailbag.workers.context import Context

#: idempotency key of a payload; `True` keys by message id, `False` turns idempotency off
IdempotencyKey = bool | Callable[[Any], str]


@dataclass(frozen=True)
class Handler:
    """One registered handler and its options (see `App.handler`)."""

    topic: str
    queue: str
    func: Callable[..., Any]
    model: Any = None
    wants_context: bool = False
    is_async: bool = True
    retry: RetryPolicy | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    timeout: float | None = None
    breaker: str | None = None
    idempotency: IdempotencyKey = True
    transactional: bool = False

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))

    def __call__(self, ctx: Context) -> Awaitable[Any]:
        """The call's awaitable (a plain function handler runs in a thread). Not itself a
        coroutine: one frame less per message, at the bottom of every chain."""
        args = (ctx.payload, ctx) if self.wants_context else (ctx.payload,)
        if self.is_async:
            return self.func(*args)
        return asyncio.to_thread(self.func, *args)


@dataclass
class _QueuePlan:
    name: str
    subscriptions: list[Subscription] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    retries: list[RetryPolicy] = field(default_factory=list)


class App:
    """A set of handlers and the queues they consume.

        app = App("inventory")

        @app.handler("orders.created", model=OrderCreated)
        async def reserve(order: OrderCreated, ctx: Context) -> None: ...

    Each handler gets a queue (`<app>.<function>` unless named) subscribed to its topic;
    several handlers may share a queue, one per topic. `topics` names topics the app
    publishes to that no queue of its own subscribes to. `middleware` runs inside the
    built-in chain, right around each handler (see `mailbag.workers.middleware`). `breakers`
    sets the thresholds of named circuit breakers (default: the worker settings).
    """

    def __init__(
        self,
        name: str,
        *,
        topics: tuple[str, ...] = (),
        middleware: list[Any] | None = None,
        breakers: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.middleware: list[Any] = list(middleware or [])
        self.breakers: dict[str, Any] = dict(breakers or {})
        self._queues: dict[str, _QueuePlan] = {}
        self._topics = tuple(topics)

    def handler(
        self,
        topic: str,
        *,
        queue: str | None = None,
        model: Any = None,
        retry: RetryPolicy | None = None,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        timeout: float | None = None,
        breaker: str | None = None,
        idempotency: IdempotencyKey = True,
        transactional: bool = False,
        ordered: bool | None = None,
        kind: str | None = None,
        filter: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function (async or plain) for messages on `topic`. It receives the
        payload (`model` validated, else decoded JSON, else bytes) and optionally `ctx`.

        - `retry`: this handler's schedule (default: its queue's policy). Handlers that
          share a queue may differ; the queue's broker-side limit is the largest.
        - `retry_on`: the exceptions worth retrying; any other dead-letters at once.
        - `timeout`: seconds the handler may run before it is cancelled and retried
          (default: the worker's `handler_timeout`).
        - `breaker`: the named dependency it calls; while that circuit is open its
          messages wait without using up attempts.
        - `idempotency`: `True` keys duplicates by message id, a function keys them by
          payload, `False` turns the check off.
        - `transactional`: the handler gets `ctx.transaction`, and the idempotency
          record commits in that transaction (SQLite and PostgreSQL stores).
        """
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        if transactional and idempotency is False:
            raise ValueError("a transactional handler records its outcome; it cannot turn idempotency off")
        retry_on = tuple(retry_on)
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise TypeError("retry_on must be a tuple of exception classes")

        def register(func: Callable[..., Any]) -> Callable[..., Any]:
            qname = queue or f"{self.name}.{func.__name__}"
            params = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
            if not 1 <= len(params) <= 2:
                raise TypeError(f"handler {func.__qualname__} must take (payload) or (payload, ctx)")
            if (topic, qname) in self.handlers:
                raise TopologyError(f"queue {qname!r} already has a handler for topic {topic!r}")
            plan = self._queues.setdefault(qname, _QueuePlan(qname))
            settings = {k: v for k, v in {"ordered": ordered, "kind": kind}.items() if v is not None}
            for key, value in settings.items():
                if key in plan.settings and plan.settings[key] != value:
                    raise TopologyError(f"queue {qname!r}: handlers disagree on {key}")
                plan.settings[key] = value
            if retry is not None:
                plan.retries.append(retry)
            plan.subscriptions.append(Subscription(topic, filter))
            self.handlers[(topic, qname)] = Handler(
                topic,
                qname,
                func,
                model,
                wants_context=len(params) == 2,
                is_async=inspect.iscoroutinefunction(func),
                retry=retry,
                retry_on=retry_on,
                timeout=timeout,
                breaker=breaker,
                idempotency=idempotency,
                transactional=transactional,
            )
            return func

        return register

    @property
    def topology(self) -> Topology:
        queues = tuple(
            Queue(p.name, tuple(p.subscriptions), **p.settings, **_queue_retry(p.retries))
            for p in self._queues.values()
        )
        return Topology(queues=queues, topics=self._topics)

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self._queues)

    def handler_for(self, queue: str, topic: str) -> Handler | None:
        return self.handlers.get((topic, queue))


def _queue_retry(retries: list[RetryPolicy]) -> dict[str, Any]:
    """The queue's policy: the handlers' one, or the one with most attempts when they
    differ, so the broker's limit never cuts a handler's own schedule short."""
    if not retries:
        return {}
    return {"retry": max(retries, key=lambda r: r.max_attempts)}
