"""A broker variant under comparison: a broker URL plus the queue options the
harness reads from its query string.

`queue=classic|quorum` is the RabbitMQ adapter's own option (`Queue.kind` of every
queue declared; `mailbag.broker.url.queue_kind`): it stays in the URL, and a broker that
has no queue types refuses it as it refuses any unknown option. The other options are the
harness's own and are removed before the URL reaches `mailbag.broker.connect`, so
adapters never see them:

- `ordered=1` (or `fifo=1`): order per ordering key (`Queue.ordered`: single active
  consumer on RabbitMQ, a FIFO queue on SQS);
- `label=NAME`: the name used in reports (default: derived from scheme and options).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from mailbag.broker import ADAPTERS, Broker, Queue, Subscription, connect, mask_url
from mailbag.broker.errors import BrokerUrlError
from mailbag.broker.url import check_parses, query_options, queue_kind, scheme_of
from mailbag.harness.timing import Timing

_FAMILY = {"memory": "memory", "amqp": "rabbitmq", "amqps": "rabbitmq", "sqs": "sqs"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
#: the in-memory broker's timing
AT_ONCE = Timing(0.0, 0.0, "the in-memory broker hands a released message back at once")


@dataclass(frozen=True)
class Target:
    """One broker variant. `url` keeps the harness options (and any password: never
    print it, print `display`); `broker_url` is what the adapter is opened with."""

    url: str
    broker_url: str
    label: str
    kind: Literal["classic", "quorum"] = "classic"
    ordered: bool = False
    #: the broker's redelivery timing, read off its URL: what the harness's patience and
    #: listening window default to (`Settings.timed`)
    timing: Timing = AT_ONCE

    @classmethod
    def parse(cls, url: str) -> Target:
        """Read the harness options off `url`; raises `BrokerUrlError` naming a bad one."""
        scheme = scheme_of(url)
        if scheme not in ADAPTERS:
            known = ", ".join(f"{s}://" for s in ADAPTERS)
            raise BrokerUrlError(f"unknown broker URL scheme {scheme!r} in {mask_url(url)!r}; expected one of {known}")
        check_parses(url)
        parts = urlsplit(url)
        kept: list[tuple[str, str]] = []
        options: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in ("ordered", "fifo", "label"):
                options["ordered" if key == "fifo" else key] = value
            else:
                kept.append((key, value))
        if _FAMILY[scheme] != "rabbitmq" and "queue" in query_options(url):
            raise BrokerUrlError(f"{mask_url(url)}: unknown option(s) queue; queue types are RabbitMQ's (amqp://)")
        kind = queue_kind(url) or "classic"  # `queue=` stays in the URL: the adapter reads it the same way
        ordered = options.get("ordered", "0").lower()
        if ordered not in _TRUE + _FALSE:
            raise BrokerUrlError(f"ordered/fifo={ordered!r} in {mask_url(url)!r}: expected 1 or 0")
        # rebuilt by hand: urlunsplit drops the '//' of an empty host (memory://, sqs://)
        broker_url = url.split("?", 1)[0] + (f"?{urlencode(kept)}" if kept else "")
        label = options.get("label") or _default_label(scheme, kind, ordered in _TRUE)
        timing = _timing(_FAMILY.get(scheme, scheme), query_options(broker_url), mask_url(url))
        return cls(url, broker_url, label, kind, ordered in _TRUE, timing)

    @property
    def display(self) -> str:
        """The URL, password masked: safe for reports and logs."""
        return mask_url(self.url)

    @property
    def in_process(self) -> bool:
        """The broker lives inside this process (memory://): a consumer process cannot be
        killed apart from it, so the crash scenario closes a consumer instead."""
        return scheme_of(self.url) == "memory"

    def queue(self, name: str, *topics: str, **settings: Any) -> Queue:
        """A queue with this variant's kind and ordering, subscribed to `topics`."""
        return Queue(name, tuple(Subscription(t) for t in topics), kind=self.kind, ordered=self.ordered, **settings)

    async def open(self) -> Broker:
        return await connect(self.broker_url)


def _timing(family: str, options: dict[str, str], shown: str) -> Timing:
    if family == "sqs":
        from mailbag.broker.sqs.adapter import DEFAULT_VISIBILITY, DEFAULT_WAIT

        visibility = _seconds(options, "visibility", DEFAULT_VISIBILITY, shown)
        wait = _seconds(options, "wait", DEFAULT_WAIT, shown)
        return Timing(
            visibility,
            wait,
            f"SQS hands a message out again once its visibility timeout ({visibility:g}s) runs out; "
            f"a long poll ({wait:g}s) may hold a FIFO group's next message back until it ends",
        )
    if family == "rabbitmq":
        from mailbag.broker.rabbitmq.adapter import DEFAULT_HEARTBEAT

        heartbeat = _seconds(options, "heartbeat", DEFAULT_HEARTBEAT, shown)
        return Timing(
            2 * heartbeat,
            0.0,
            "RabbitMQ hands back at once what a closed channel held, and what a connection that died "
            f"silently held once it missed two heartbeats ({heartbeat:g}s each)",
        )
    return AT_ONCE


def _seconds(options: dict[str, str], name: str, default: float, shown: str) -> float:
    raw = options.get(name, str(default))
    try:
        return float(raw)
    except ValueError:
        raise BrokerUrlError(f"{name}={raw!r} in {shown!r}: expected seconds") from None


def _default_label(scheme: str, kind: str, ordered: bool) -> str:
    family = _FAMILY.get(scheme, scheme)
    if family == "sqs":
        return "sqs-fifo" if ordered else "sqs-standard"
    variant = [kind] if family == "rabbitmq" else []
    if ordered:
        variant.append("ordered")
    return "-".join([family, *variant])
