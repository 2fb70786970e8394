"""How a `Topology` sits in RabbitMQ: names, queue arguments and the declaration.

- topic -> durable fanout exchange of the same name: every bound queue gets every message;
- queue -> durable queue (classic, or quorum with `x-delivery-limit`), bound to its
  topics; `ordered` adds single-active-consumer so a failover keeps order; its
  `x-dead-letter-*` arguments point at `<queue>.dlq`, for what the broker itself
  dead-letters (a quorum queue's delivery limit, a plain client's reject);
- subscription filter -> a headers exchange `<topic>.filter` bound to the topic, the
  queue bound to it once per combination of allowed values (x-match all);
- retry delay -> the fixed binary delay levels of `mailbag.broker.rabbitmq.delays`,
  shared by every queue of its kind; each queue is bound to their deliver exchange.

RabbitMQ closes the channel on any failed declaration, so every declaration runs on
a channel of its own, and a conflict becomes a `TopologyError` naming the queue or
exchange and our setting behind the argument.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import aiormq
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

from mailbag.broker.errors import TopologyError
from mailbag.broker.rabbitmq.delays import bind_target
from mailbag.broker.topology import Queue, Subscription, Topology

#: the setting behind each queue argument, to name it in a conflict
_SETTING_OF = {
    "x-queue-type": "kind",
    "x-single-active-consumer": "ordered",
    "x-delivery-limit": "retry.max_attempts",
    "x-dead-letter-routing-key": "dead_letter_queue",
}

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)' for (queue|exchange) '([^']+)'[^:]*: (.*)$")


def filter_exchange_name(topic: str) -> str:
    return f"{topic}.filter"


def _replicated(kind: str) -> dict[str, Any]:
    """A quorum queue dead-letters at least once (the broker keeps the message until
    the target confirms), which needs `reject-publish` overflow."""
    if kind != "quorum":
        return {}  # classic is the default; naming it would clash with queues declared without it
    return {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def queue_arguments(spec: Queue) -> dict[str, Any]:
    args = {
        **_replicated(spec.kind),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": spec.dead_letter_queue,
    }
    if spec.kind == "quorum":
        # the broker delivers limit + 1 times; past that it dead-letters on its own
        args["x-delivery-limit"] = spec.retry.max_attempts - 1
    if spec.ordered:
        args["x-single-active-consumer"] = True
    return args


def dead_letter_queue_arguments(spec: Queue) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if spec.kind == "quorum" else {}


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding of `topology` on `channel` (which a
    failure closes), the delay levels of its queues' kinds being declared already.
    Idempotent: RabbitMQ accepts an identical redeclaration."""
    try:
        exchanges = {}
        for topic in topology.topics:
            exchanges[topic] = await channel.declare_exchange(topic, ExchangeType.FANOUT, durable=True)
        for spec in topology.queues:
            await channel.declare_queue(
                spec.dead_letter_queue, durable=True, arguments=dead_letter_queue_arguments(spec)
            )
            queue = await channel.declare_queue(spec.name, durable=True, arguments=queue_arguments(spec))
            await bind_target(channel, spec.name, spec.kind)
            for sub in spec.subscriptions:
                if not sub.filter:
                    await queue.bind(exchanges[sub.topic])
                    continue
                headers = await channel.declare_exchange(
                    filter_exchange_name(sub.topic), ExchangeType.HEADERS, durable=True
                )
                await headers.bind(exchanges[sub.topic])
                for arguments in _filter_bindings(sub):
                    await queue.bind(headers, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise _conflict(exc) from None


def _filter_bindings(sub: Subscription) -> list[dict[str, Any]]:
    """One headers binding per combination of allowed values: a key matches any of its
    values, and every key must match."""
    assert sub.filter is not None
    keys = sorted(sub.filter)
    return [
        {"x-match": "all", **dict(zip(keys, values))} for values in itertools.product(*(sub.filter[k] for k in keys))
    ]


def _conflict(exc: aiormq.exceptions.ChannelPreconditionFailed) -> TopologyError:
    text = str(exc.args[0] if exc.args else exc)
    found = _INEQUIVALENT.search(text)
    if found is None:
        return TopologyError(f"RabbitMQ refused the topology: {text}")
    argument, kind, name, detail = found.groups()
    setting = _SETTING_OF.get(argument)
    what = f"{setting} ({argument})" if setting else argument
    return TopologyError(
        f"{kind} {name!r} already exists with a different {what}: {detail}; delete it or declare it as it is"
    )
