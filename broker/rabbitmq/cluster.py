"""Several RabbitMQ nodes behind one URL: `amqp://user:pass@node1:5672,node2:5672/vhost`
lists the nodes of a cluster, and the connection fails over between them.

aio-pika's robust connection reconnects to the one URL it was given. `FailoverConnection`
moves it on instead: a connection that drops (its node stopped) or an attempt that
fails (the next node is down too) goes on to the next node in turn, so the client
lands on a surviving one. Queues and consumers are restored
there as after any reconnect; quorum queues keep their messages across the failover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from yarl import URL

from mailbag.broker.url import check_parses, hosts_of


def node_urls(url: str) -> list[str]:
    """One URL per node of `url` (comma-separated hosts share its user, vhost and query)."""
    check_parses(url)
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{node}")) for node in hosts_of(url)]


class FailoverConnection(aio_pika.RobustConnection):
    """A robust connection that connects to `nodes` in turn (see the module docstring)."""

    def __init__(self, url: str | URL, *, nodes: Sequence[str] = (), **kwargs: Any) -> None:
        self._nodes = [URL(n) for n in nodes] or [URL(url)]
        self._at = 0
        super().__init__(URL(url), **kwargs)

    @property
    def url(self) -> URL:
        """The node the connection is on, or tries next."""
        return self._nodes[self._at]

    @url.setter
    def url(self, value: URL) -> None:
        """aio-pika sets its URL once (and again on a new secret): keep the node list."""
        if len(self._nodes) == 1:
            self._nodes = [URL(value)]

    def _next_node(self) -> None:
        self._at = (self._at + 1) % len(self._nodes)

    async def _RobustConnection__connect_transport(self) -> None:
        """aio-pika's one connection attempt (a private hook, the only one every attempt
        goes through): an attempt that fails moves on to the next node."""
        try:
            await super()._RobustConnection__connect_transport()  # type: ignore[misc]
        except BaseException:
            self._next_node()
            raise

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        """A connection that drops (its node stopped) reconnects to the next node."""
        self._next_node()
        await super()._on_connection_close(closing)

    @property
    def node(self) -> str:
        """host:port of the node connected to (or being tried)."""
        current = self._nodes[self._at]
        return f"{current.host}:{current.port}"
