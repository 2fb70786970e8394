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
from mailbag.broker.outgoing import TopicModels
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
            topic,
            payload,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
            message_id=message_id,
            max_size=self.broker.max_message_size,
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
        size = self.broker.max_message_size
        messages = [
            self.models.message(topic, p, key=key, headers=headers, correlation_id=correlation_id, max_size=size)
            for p in payloads
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
                    unconfirmed = set(exc.unconfirmed)
                    confirmed.update(m.id for m in run if m.id not in unconfirmed)
                    unknown = set(exc.unknown)
                    exc.unknown = [i for i in ids if i in unknown]
                    exc.failed = [i for i in ids if i not in confirmed and i not in unknown]
                    exc.sent = [i for i in ids if i in confirmed]
                    raise
                for m in run:
                    confirmed.add(m.id)
                    futures[m.id].set_result(None)
            outcomes = await asyncio.gather(*(asyncio.shield(f) for f in joined.values()), return_exceptions=True)
            lost = {i: o for i, o in zip(joined, outcomes) if isinstance(o, BaseException)}
            if lost:
                first = next(iter(lost.values()))
                unknown = {i for i, o in lost.items() if isinstance(o, PublishError) and i in o.unknown}
                raise PublishError(
                    f"a concurrent publish of the same id failed: {_describe(first)}",
                    [i for i in ids if i in lost and i not in unknown],
                    [i for i in ids if i not in lost],
                    [i for i in ids if i in unknown],
                ) from first
        except BaseException as exc:
            _settle(futures, confirmed, exc)
            raise
        finally:
            for i in futures:
                del self._in_flight[i]
        return ids

    async def _publish_run(self, run: list[Message], mandatory: bool) -> None:
        """Publish one topic's batch, retrying what is not confirmed until the deadline.
        An attempt that outlives `attempt_timeout` is not cancelled (that would cut the
        adapter's own reconnect short): its messages count as unknown, and the next try
        waits for it to end first and takes its outcome, so one message is never in two
        publishes at once."""
        topic = run[0].topic
        pending = run
        #: ids sent by an attempt that did not end in a confirm or a refusal
        unknown: set[str] = set()
        straggler: asyncio.Future[None] | None = None

        def outcome_of(task: asyncio.Future[None], sent: list[Message]) -> None:
            """Narrow `pending` by how one attempt ended; re-raise its failure."""
            nonlocal pending
            exc = task.exception()
            if exc is None:
                pending = []
                unknown.difference_update(m.id for m in sent)
                return
            if isinstance(exc, PublishFailed):
                left = set(exc.message_ids)
                unknown.difference_update(m.id for m in sent if m.id not in left)
                unknown.update(exc.unknown)
                pending = [m for m in pending if m.id in left or m not in sent]
            elif not isinstance(exc, PERMANENT):
                unknown.update(m.id for m in sent)  # it may have got out before the fault
            raise exc

        async def attempt() -> None:
            nonlocal straggler
            if straggler is not None:  # the last attempt outlived its timeout: its outcome first
                await asyncio.wait({straggler})
                task, straggler = straggler, None
                try:
                    outcome_of(task, pending)
                except Exception:
                    pass
                if not pending:
                    self.breaker.succeeded()
                    return
            if not self.breaker.allow():
                wait = self.breaker.retry_after()
                raise CircuitOpen(
                    f"circuit open after repeated broker faults; next try in {wait:.1f}s",
                    [m.id for m in pending if m.id not in unknown],
                    wait,
                    unknown=[m.id for m in pending if m.id in unknown],
                )
            sent = pending
            task = asyncio.ensure_future(self._publish_once(topic, sent, mandatory))
            try:
                done, _ = await asyncio.wait({task}, timeout=self.settings.attempt_timeout)
            except asyncio.CancelledError:
                self.breaker.abandoned()
                task.cancel()
                raise
            if not done:
                straggler = task
                unknown.update(m.id for m in sent)
                self.breaker.failed()
                raise TimeoutError(f"no confirm within {self.settings.attempt_timeout:g}s")
            try:
                outcome_of(task, sent)
            except Exception as exc:
                if is_transient(exc):
                    self.breaker.failed()
                else:
                    self.breaker.abandoned()
                raise
            self.breaker.succeeded()

        def error(reason: str) -> PublishError:
            return PublishError(
                reason,
                [m.id for m in pending if m.id not in unknown],
                unknown=[m.id for m in pending if m.id in unknown],
            )

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
            raise error(f"broker did not confirm within {s.deadline:g}s: {_describe(cause)}") from cause
        except Exception as exc:
            raise error(f"broker refused the publish: {_describe(exc)}") from exc
        finally:
            if straggler is not None:  # still running: it ends by the adapter's own timeout
                straggler.add_done_callback(_retrieve)

    async def _publish_once(self, topic: str, messages: list[Message], mandatory: bool) -> None:
        if self.settings.declare_topics and topic not in self._declared:
            await self.broker.declare(Topology(topics=(topic,)))
            self._declared.add(topic)
        await self.broker.publish(topic, messages, mandatory=mandatory)


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def _settle(futures: dict[str, asyncio.Future[None]], confirmed: set[str], exc: BaseException) -> None:
    """Tell the tasks that joined this call's publishes how each of them ended."""
    for message_id, fut in futures.items():
        if fut.done():
            continue
        if message_id in confirmed:
            fut.set_result(None)
            continue
        if isinstance(exc, PublishError):
            unknown = message_id in exc.unknown
            fut.set_exception(
                PublishError(exc.reason, [] if unknown else [message_id], unknown=[message_id] if unknown else [])
            )
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
