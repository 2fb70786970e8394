"""Delayed delivery on RabbitMQ through a fixed set of delay queues, whatever delays are
asked (the binary delay levels of NServiceBus's RabbitMQ transport and kombu 5.5).

A delay is rounded up to whole `UNIT`s (10 ms) and spelled in `LEVELS` (28) bits, most
significant first, as the routing key: `0.0.1.0. ... .1`. Level `i` is a topic exchange
`<prefix>.<i>` and a queue of the same name whose message TTL is `UNIT * 2**i` and whose
dead-letter exchange is level `i - 1` (the original routing key kept). Exchange `i`
routes a key whose bit `i` is 1 into its queue, and one whose bit is 0 straight on to
exchange `i - 1`. After level 0 the message reaches `<prefix>.deliver`, which passes
everything on to `<prefix>.route`, a headers exchange to which each work queue is
bound by the `TARGET` header the message carries. A message therefore waits exactly
its bits' sum of TTLs: one queue per level, every message in a level queue has the same
TTL, so they expire in order, at the head.

Orphans: a message whose work queue was deleted while it waited matches no binding of
`<prefix>.route`, whose alternate exchange takes it into `ORPHANS`, one catch-all
queue per vhost for both kinds, where it keeps its headers (`TARGET` names the queue)
for inspection. Without it a classic level drops such a message, and a quorum level
(at-least-once dead-lettering) keeps it and retries it every few minutes; from 32 held
messages a quorum level stops dead-lettering, and every queue's retries wait behind them.
`<prefix>.route` is a separate exchange because RabbitMQ refuses to change the arguments
of an existing one: a vhost whose `<prefix>.deliver` came from an earlier version gets
the catch-all too, and the orphans its quorum levels hold move there on RabbitMQ's next
dead-letter retry (`dead_letter_worker_publisher_confirm_timeout`, 3 minutes by default).

Bounds: at most `LEVELS` queues and `LEVELS + 1` exchanges per prefix, shared by every
queue of the vhost; one prefix per queue kind (classic, quorum), so a quorum queue's
delayed messages stay replicated. The longest delay is `UNIT * (2**LEVELS - 1)` (about
31 days). A delayed message is never delivered early and at most `UNIT` (rounding)
plus one dead-letter hop per set bit late (a few milliseconds each on an idle broker).
"""

from __future__ import annotations

import math
from typing import Any

from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel

from mailbag.broker.errors import BrokerError

#: the smallest step of a delay, in seconds
UNIT = 0.01
#: number of binary delay levels
LEVELS = 28
#: longest delay, in seconds
MAX_DELAY = UNIT * (2**LEVELS - 1)
#: the work queue a delayed message is for (taken out again when it is received). Not
#: `x-`: a headers exchange leaves headers starting with `x-` out of its matching
TARGET = "mailbag-delay-target"
#: the fanout exchange and quorum queue (one name) keeping delayed messages whose work
#: queue is gone, shared by every prefix of the vhost
ORPHANS = "mailbag.delay.orphans"


def prefix_for(kind: str) -> str:
    """The name prefix of the delay levels for queues of `kind`."""
    return "mailbag.delay" if kind != "quorum" else "mailbag.delay.quorum"


def units(delay: float) -> int:
    """`delay` seconds as whole `UNIT`s, rounded up so nothing arrives early."""
    if delay > MAX_DELAY:
        raise BrokerError(f"RabbitMQ delays a message at most {MAX_DELAY:g}s here; asked for {delay:g}s")
    return max(1, math.ceil(round(delay / UNIT, 6)))


def routing_key(count: int) -> str:
    """The delay in bits, most significant (level `LEVELS - 1`) first."""
    return ".".join("1" if count >> level & 1 else "0" for level in reversed(range(LEVELS)))


def entry(prefix: str, count: int) -> str:
    """The exchange to publish a delay of `count` units to: its highest set bit's level."""
    return level_name(prefix, count.bit_length() - 1)


def level_name(prefix: str, level: int) -> str:
    return f"{prefix}.{level}"


def deliver_name(prefix: str) -> str:
    return f"{prefix}.deliver"


def route_name(prefix: str) -> str:
    return f"{prefix}.route"


def queue_names(prefix: str) -> list[str]:
    """Every delay queue of `prefix`."""
    return [level_name(prefix, level) for level in range(LEVELS)]


def _bit_pattern(level: int, bit: str) -> str:
    """A topic pattern matching keys whose bit at `level` is `bit`."""
    return ".".join(["*"] * (LEVELS - 1 - level) + [bit, "#"])


def _queue_arguments(prefix: str, level: int, kind: str) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-message-ttl": round(UNIT * 1000) * 2**level,
        "x-dead-letter-exchange": level_name(prefix, level - 1) if level else deliver_name(prefix),
    }
    if kind == "quorum":
        args |= {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return args


async def declare_levels(channel: AbstractChannel, kind: str) -> None:
    """Declare the levels, the deliver and route exchanges of `kind` and the catch-all
    for orphans (idempotent)."""
    prefix = prefix_for(kind)
    orphans = await channel.declare_exchange(ORPHANS, ExchangeType.FANOUT, durable=True)
    kept = await channel.declare_queue(ORPHANS, durable=True, arguments={"x-queue-type": "quorum"})
    await kept.bind(orphans)
    route = await channel.declare_exchange(
        route_name(prefix), ExchangeType.HEADERS, durable=True, arguments={"alternate-exchange": ORPHANS}
    )
    deliver = await channel.declare_exchange(deliver_name(prefix), ExchangeType.HEADERS, durable=True)
    await route.bind(deliver, arguments={"x-match": "all"})  # no header to match: everything passes
    below = deliver
    for level in range(LEVELS):
        exchange = await channel.declare_exchange(level_name(prefix, level), ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(
            level_name(prefix, level), durable=True, arguments=_queue_arguments(prefix, level, kind)
        )
        await queue.bind(exchange, routing_key=_bit_pattern(level, "1"))
        await below.bind(exchange, routing_key=_bit_pattern(level, "0"))
        below = exchange


async def bind_target(channel: AbstractChannel, queue: str, kind: str) -> None:
    """Let delayed messages for `queue` reach it from the route exchange of `kind`."""
    route = await channel.get_exchange(route_name(prefix_for(kind)), ensure=False)
    target = await channel.get_queue(queue, ensure=False)
    await target.bind(route, arguments={"x-match": "all", TARGET: queue})
