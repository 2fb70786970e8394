"""The handler registry: which function handles which topic on which queue, and the
topology that follows from it."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from broker import Queue, RetryPolicy, Subscription, Topology, TopologyError
from workers.context import Context


@dataclass(frozen=True)
class Handler:
    """One registered handler. `wants_context` says whether it takes `ctx` too."""

    topic: str
    queue: str
    func: Callable[..., Any]
    model: Any = None
    wants_context: bool = False
    is_async: bool = True

    @property
    def name(self) -> str:
        return getattr(self.func, "__qualname__", repr(self.func))

    async def __call__(self, ctx: Context) -> Any:
        args = (ctx.payload, ctx) if self.wants_context else (ctx.payload,)
        if self.is_async:
            return await self.func(*args)
        return await asyncio.to_thread(self.func, *args)


@dataclass
class _QueuePlan:
    name: str
    subscriptions: list[Subscription] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


class App:
    """A set of handlers and the queues they consume.

        app = App("inventory")

        @app.handler("orders.created", model=OrderCreated)
        async def reserve(order: OrderCreated, ctx: Context) -> None: ...

    Each handler gets a queue (`<app>.<function>` unless named) subscribed to its topic;
    several handlers may share a queue, one per topic. `topics` names topics the app
    publishes to that no queue of its own subscribes to.
    """

    def __init__(self, name: str, *, topics: tuple[str, ...] = (), middleware: list[Any] | None = None) -> None:
        self.name = name
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.middleware: list[Any] = list(middleware or [])
        self._queues: dict[str, _QueuePlan] = {}
        self._topics = tuple(topics)

    def handler(
        self,
        topic: str,
        *,
        queue: str | None = None,
        model: Any = None,
        retry: RetryPolicy | None = None,
        ordered: bool | None = None,
        kind: str | None = None,
        filter: dict[str, Any] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register a function (async or plain) for messages on `topic`. It receives the
        payload (`model` validated, else decoded JSON, else bytes) and optionally `ctx`."""

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
            settings = {k: v for k, v in {"retry": retry, "ordered": ordered, "kind": kind}.items() if v is not None}
            for key, value in settings.items():
                if key in plan.settings and plan.settings[key] != value:
                    raise TopologyError(f"queue {qname!r}: handlers disagree on {key}")
                plan.settings[key] = value
            plan.subscriptions.append(Subscription(topic, filter))
            self.handlers[(topic, qname)] = Handler(
                topic,
                qname,
                func,
                model,
                wants_context=len(params) == 2,
                is_async=inspect.iscoroutinefunction(func),
            )
            return func

        return register

    @property
    def topology(self) -> Topology:
        queues = tuple(Queue(p.name, tuple(p.subscriptions), **p.settings) for p in self._queues.values())
        return Topology(queues=queues, topics=self._topics)

    @property
    def queues(self) -> tuple[str, ...]:
        return tuple(self._queues)

    def handler_for(self, queue: str, topic: str) -> Handler | None:
        return self.handlers.get((topic, queue))
