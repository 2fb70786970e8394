"""Trace context carried in message headers, and the messaging spans around it.

Everything here goes through OpenTelemetry's API when it is installed (`pip install
mailbag[tracing]`) and an SDK's tracer provider is set, and does nothing otherwise: no
spans, no headers, next to no cost. This is the one module that imports OpenTelemetry;
`ENABLED` says whether it could, `active()` whether a provider records.

The context travels as headers named by the globally configured propagator (W3C
`traceparent` / `tracestate` by default), so it rides AMQP headers and SNS/SQS message
attributes like any other header (`mailbag.broker.sqs.marshal` keeps to the ten-attribute
budget; trace headers come first, so they are the last to be packed). Adapters never
call this module: the layers that publish (`publishers`, a handler's `ctx.publish`, the
saga orchestrator) inject, and the worker extracts; a plain `Broker.publish` sends
exactly the headers it is given.

Spans follow OpenTelemetry's messaging conventions:

- `publish <topic>` (PRODUCER) around a confirmed publish. Its context becomes the
  creation context of each message that has none; a message that already carries one
  (an outbox row) keeps it, and the span links to it.
- `create <topic>` (PRODUCER) when an event is written to an outbox: the creation
  context the relay's publish later keeps.
- `process <queue>` (CONSUMER) per delivery, around the handler. It links to the
  message's creation context, as the conventions ask, and is also its child: each
  delivery is processed on its own, so that parent is unambiguous, and a flow of events
  across services (a saga) reads as one trace. A message without trace context gets a
  span under whatever span is current. Its outcome shows as an event (`retry`,
  `postpone`, `dead_letter`) with the reason, and status ERROR when the try failed.
  A worker decides once, as it starts, whether to trace: set the provider before.

What is published with no span current (a saga command sent by a deadline timer or
resent on restart) starts a trace of its own.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from mailbag.broker.base import Broker
from mailbag.broker.message import Delivery, Message

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError:  # the `tracing` extra is not installed
    ENABLED = False
else:
    ENABLED = True

#: the instrumentation scope of every span mailbag starts
SCOPE = "mailbag"

#: URL scheme -> `messaging.system` when publishing, when processing
_SYSTEMS = {
    "memory": ("mailbag.memory", "mailbag.memory"),
    "amqp": ("rabbitmq", "rabbitmq"),
    "amqps": ("rabbitmq", "rabbitmq"),
    "sqs": ("aws.sns", "aws_sqs"),
}

_tracer_of: tuple[Any, Any] = (None, None)


def active() -> bool:
    """True when spans would be recorded: OpenTelemetry is installed and a tracer
    provider other than the API's default no-op one is set."""
    return ENABLED and not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


def publishing(broker: Broker, topic: str, messages: list[Message]) -> AbstractContextManager[list[Message]]:
    """A `publish <topic>` span for the block; yields the messages to send, each with
    a creation context (its own, or the span's)."""
    if not active():
        return nullcontext(messages)
    return _publishing(broker, topic, messages)


@contextmanager
def _publishing(broker: Broker, topic: str, messages: list[Message]) -> Iterator[list[Message]]:
    created = [_creation(m) for m in messages]
    attributes = (
        _message_attributes(messages[0]) if len(messages) == 1 else {"messaging.batch.message_count": len(messages)}
    )
    attributes.update(_operation(broker, "publish", topic))
    links = [Link(c) for c in created if c is not None]
    with _tracer().start_as_current_span(
        f"publish {topic}", kind=SpanKind.PRODUCER, attributes=attributes, links=links
    ):
        yield [m if c is not None else _inject(m) for m, c in zip(messages, created)]


def created(message: Message) -> Message:
    """`message` with a creation context: a `create <topic>` span's, unless it carries
    one already (then it is left as it is)."""
    if not active() or _creation(message) is not None:
        return message
    attributes = {
        "messaging.operation.type": "create",
        "messaging.operation.name": "create",
        "messaging.destination.name": message.topic,
        **_message_attributes(message),
    }
    with _tracer().start_as_current_span(f"create {message.topic}", kind=SpanKind.PRODUCER, attributes=attributes):
        return _inject(message)


@contextmanager
def processing(broker: Broker, delivery: Delivery, attempt: int) -> Iterator[Any]:
    """The `process <queue>` span of one delivery, current for the block (only called
    where `active()`). The caller records the outcome with `retried`, `postponed` or
    `dead_lettered`; an exception leaving the block marks nothing by itself."""
    message = delivery.message
    creation = _creation(message)
    parent = None if creation is None else trace.set_span_in_context(trace.NonRecordingSpan(creation))
    attributes = _operation(broker, "process", delivery.queue)
    attributes.update(_message_attributes(message))
    attributes["messaging.destination_publish.name"] = message.topic
    attributes["messaging.message.body.size"] = len(message.body)
    attributes["mailbag.attempt"] = attempt
    with _tracer().start_as_current_span(
        f"process {delivery.queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=[Link(creation)] if creation is not None else None,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def retried(span: Any, delay: float, reason: str, error: BaseException | None) -> None:
    """The try failed and the message comes back after `delay` seconds."""
    _failed(span, reason, error)
    span.add_event("retry", {"mailbag.delay": delay, "mailbag.reason": reason})


def postponed(span: Any, delay: float, reason: str) -> None:
    """The message goes back untried for `delay` seconds (not a failure)."""
    span.add_event("postpone", {"mailbag.delay": delay, "mailbag.reason": reason})


def dead_lettered(span: Any, reason: str, error: BaseException | None) -> None:
    """The message goes to its dead-letter queue with `reason`."""
    _failed(span, reason, error)
    span.add_event("dead_letter", {"mailbag.reason": reason})


def refused(broker: Broker, delivery: Delivery, attempt: int, reason: str, error: BaseException | None) -> None:
    """A `process` span for a delivery dead-lettered before any handler ran (no
    handler for its topic, an undecodable payload)."""
    if active():
        with processing(broker, delivery, attempt) as span:
            dead_lettered(span, reason, error)


def _failed(span: Any, reason: str, error: BaseException | None) -> None:
    """ERROR status with the reason, and the error with its own traceback only: the
    errors it was raised from (a pydantic ValidationError, say) may quote the body."""
    if error is not None:
        own = "".join(traceback.format_exception(error, chain=False))
        span.record_exception(error, attributes={"exception.stacktrace": own})
        span.set_attribute("error.type", type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, reason))


def _tracer() -> Any:
    """The tracer of the global provider, fetched again when the provider changes
    (set after the first message, or replaced)."""
    global _tracer_of
    provider = trace.get_tracer_provider()
    if _tracer_of[0] is not provider:
        _tracer_of = (provider, provider.get_tracer(SCOPE))
    return _tracer_of[1]


def _creation(message: Message) -> Any:
    """The valid span context carried in the message's headers, or None."""
    if not message.headers:
        return None
    carrier = {k: v for k, v in message.headers.items() if isinstance(v, str)}
    context = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def _inject(message: Message) -> Message:
    """`message` carrying the current context; its own headers follow the trace headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return message  # the configured propagator carries nothing
    return message.evolve(headers={**carrier, **message.headers})


def _operation(broker: Broker, operation: str, destination: str) -> dict[str, Any]:
    scheme = broker.url.split("://", 1)[0].lower()
    systems = _SYSTEMS.get(scheme, (scheme, scheme))
    return {
        "messaging.system": systems[operation == "process"],
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
    }


def _message_attributes(message: Message) -> dict[str, Any]:
    attributes: dict[str, Any] = {"messaging.message.id": message.id}
    if message.correlation_id:
        attributes["messaging.message.conversation_id"] = message.correlation_id
    return attributes
