"""The publisher: typed publish calls that return once the broker confirmed, retried
with backoff within a deadline when the broker has a transient fault, failing fast
through a circuit breaker while it is down, and sending a message id only once when
several tasks publish it at the same time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, RetryError, retry_if_exception, stop_after_delay, wait_exponential_jitter

from mailbag.broker import Broker, BrokerClosed, BrokerError, Message, MessageTooLarge, PublishFailed, Topology, tracing
from mailbag.broker.breaker import BreakerPolicy, CircuitBreaker
from mailbag.broker.errors import TopologyError, UnknownTopic, Unroutable
from mailbag.publishers.envelope import TopicModels
from mailbag.publishers.errors import CircuitOpen, PublishError

log = logging.getLogger("mailbag.publisher")

#: faults that say something about this message or this program, not about the broker's
#: health: retrying cannot help, and they do not count against the circuit
PERMANENT = (BrokerClosed, MessageTooLarge, TopologyError, UnknownTopic, Unroutable, ValueError, TypeError)


@dataclass(frozen=True)
class PublisherSettings:
    """`deadline`: how long one publish call may keep retrying, in seconds.
    `attempt_timeout`: how long one try may wait for the broker's confirm.
    Backoff between tries grows from `initial_backoff` to `max_backoff`, with jitter.
    `declare_topics`: declare each topic once before its first publish (idempotent)."""

    deadline: float = 10.0
    attempt_timeout: float = 5.0
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    breaker: BreakerPolicy = field(default_factory=lambda: BreakerPolicy(reset_after=5.0))
    declare_topics: bool = True

    def __post_init__(self) -> None:
        if self.deadline < 0 or self.attempt_timeout <= 0:
            raise ValueError("deadline must be >= 0 and attempt_timeout > 0")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise ValueError("backoff must satisfy 0 <= initial_backoff <= max_backoff")


def is_transient(exc: BaseException) -> bool:
    """A broker fault worth retrying: unreachable, unconfirmed, timed out."""
    return isinstance(exc, (BrokerError, OSError, asyncio.TimeoutError)) and not isinstance(exc, PERMANENT)


class Publisher:
    """Publishes through `broker`. Payloads of a topic with a registered model (from
    `models`, or from the handlers of `app`) are validated before sending.

        publisher = Publisher(broker, app=app)
        message_id = await publisher.publish("orders.placed", OrderPlaced(...), key=order_id)

    Every call returns the message ids once the broker confirmed them, or raises
    `PublishError` naming the ones it did not (`CircuitOpen` when it failed fast,
    `PayloadRejected` when validation refused it). A message no queue takes is
    published and dropped (see `Broker.publish`), unless `mandatory` is set (here for
    every call, or per call): then the call raises `Unroutable` naming the topic, at
    once and without touching the circuit. Safe to share between the tasks of one
    event loop."""

    def __init__(
        self,
        broker: Broker,
        *,
        app: Any = None,
        models: Mapping[str, Any] | None = None,
        settings: PublisherSettings | None = None,
        mandatory: bool = False,
    ) -> None:
        self.broker = broker
        self.mandatory = mandatory
        self.settings = settings or PublisherSettings()
        self.models = TopicModels(models, app)
        self.breaker = CircuitBreaker(self.settings.breaker, name="publish")
        self._declared: set[str] = set()
        self._in_flight: dict[str, asyncio.Future[None]] = {}

    async def publish(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
        mandatory: bool | None = None,
    ) -> str:
        """Publish one payload (pydantic model, dict or other JSON-able value, or bytes);
        returns its message id. Giving `message_id` makes the call idempotent for
        consumers that drop duplicates."""
        message = self.models.message(
            topic, payload, key=key, headers=headers, correlation_id=correlation_id, message_id=message_id
        )
        (message_id,) = await self.send([message], mandatory=mandatory)
        return message_id

    async def publish_many(
        self,
        topic: str,
        payloads: Iterable[Any],
        *,
        key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        correlation_id: str | None = None,
        mandatory: bool | None = None,
    ) -> list[str]:
        """Publish several payloads to one topic in one confirmed batch; all are
        validated before any is sent. Returns their ids in order."""
        messages = [
            self.models.message(topic, p, key=key, headers=headers, correlation_id=correlation_id) for p in payloads
        ]
        return await self.send(messages, mandatory=mandatory)

    async def send(self, messages: Sequence[Message], *, mandatory: bool | None = None) -> list[str]:
        """Publish prepared messages (the outbox relay's way in), in order: consecutive
        messages of one topic go as one batch. An id already being published by another
        task is not sent again; this call waits for that publish and shares its outcome."""
        ids = [m.id for m in messages]
        joined = {i: self._in_flight[i] for i in ids if i in self._in_flight}
        own = list({m.id: m for m in messages if m.id not in joined}.values())
        loop = asyncio.get_running_loop()
        futures = {m.id: loop.create_future() for m in own}
        self._in_flight.update(futures)
        confirmed: set[str] = set()
        try:
            for run in _runs_by_topic(own):
                try:
                    with tracing.publishing(self.broker, run[0].topic, run) as traced:
                        await self._publish_run(traced, self.mandatory if mandatory is None else mandatory)
                except PublishError as exc:
                    confirmed.update(m.id for m in run if m.id not in exc.failed)
                    exc.failed = [i for i in ids if i not in confirmed]
                    exc.sent = [i for i in ids if i in confirmed]
                    raise
                for m in run:
                    confirmed.add(m.id)
                    futures[m.id].set_result(None)
            outcomes = await asyncio.gather(*(asyncio.shield(f) for f in joined.values()), return_exceptions=True)
            lost = [i for i, outcome in zip(joined, outcomes) if isinstance(outcome, BaseException)]
            if lost:
                first = next(o for o in outcomes if isinstance(o, BaseException))
                raise PublishError(
                    f"a concurrent publish of the same id failed: {_describe(first)}",
                    [i for i in ids if i in lost],
                    [i for i in ids if i not in lost],
                ) from first
        except BaseException as exc:
            _settle(futures, confirmed, exc)
            raise
        finally:
            for i in futures:
                del self._in_flight[i]
        return ids

    async def _publish_run(self, run: list[Message], mandatory: bool) -> None:
        topic = run[0].topic
        pending = run

        async def attempt() -> None:
            nonlocal pending
            if not self.breaker.allow():
                wait = self.breaker.retry_after()
                raise CircuitOpen(
                    f"circuit open after repeated broker faults; next try in {wait:.1f}s", [m.id for m in pending], wait
                )
            try:
                await asyncio.wait_for(self._publish_once(topic, pending, mandatory), self.settings.attempt_timeout)
            except asyncio.CancelledError:
                self.breaker.abandoned()
                raise
            except PublishFailed as exc:
                pending = [m for m in pending if m.id in set(exc.message_ids)] or pending
                self.breaker.failed()
                raise
            except Exception as exc:
                if is_transient(exc):
                    self.breaker.failed()
                else:
                    self.breaker.abandoned()
                raise
            self.breaker.succeeded()

        s = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_delay(s.deadline),
            wait=wait_exponential_jitter(multiplier=s.initial_backoff, max=s.max_backoff, jitter=s.initial_backoff),
            retry=retry_if_exception(is_transient),
            reraise=False,
        )
        try:
            async for try_ in retrying:
                with try_:
                    await attempt()
        except (CircuitOpen, Unroutable):
            raise
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise PublishError(
                f"broker did not confirm within {s.deadline:g}s: {_describe(cause)}", [m.id for m in pending]
            ) from cause
        except Exception as exc:
            raise PublishError(f"broker refused the publish: {_describe(exc)}", [m.id for m in pending]) from exc

    async def _publish_once(self, topic: str, messages: list[Message], mandatory: bool) -> None:
        if self.settings.declare_topics and topic not in self._declared:
            await self.broker.declare(Topology(topics=(topic,)))
            self._declared.add(topic)
        await self.broker.publish(topic, messages, mandatory=mandatory)


def _settle(futures: dict[str, asyncio.Future[None]], confirmed: set[str], exc: BaseException) -> None:
    """Tell the tasks that joined this call's publishes how each of them ended."""
    for message_id, fut in futures.items():
        if fut.done():
            continue
        if message_id in confirmed:
            fut.set_result(None)
            continue
        if isinstance(exc, PublishError):
            fut.set_exception(PublishError(exc.reason, [message_id]))
        else:
            fut.set_exception(
                PublishError(f"the publish this call joined was interrupted ({type(exc).__name__})", [message_id])
            )
        fut.exception()  # retrieved here: whoever joined may be gone


def _runs_by_topic(messages: list[Message]) -> list[list[Message]]:
    runs: list[list[Message]] = []
    for m in messages:
        if runs and runs[-1][0].topic == m.topic:
            runs[-1].append(m)
        else:
            runs.append([m])
    return runs


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
