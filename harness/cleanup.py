"""What a comparison run declared, removed once each scenario is done, so a run leaves
the broker with the queues and topics it found."""

from __future__ import annotations

import logging

from mailbag.broker import Broker, Topology
from mailbag.harness.delegate import Delegating

log = logging.getLogger("mailbag.harness")


class Declaring(Delegating):
    """Wraps `inner` and keeps every topology declared through it, for `remove_declared`."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner)
        self.declared: list[Topology] = []

    async def declare(self, topology: Topology) -> None:
        self.declared.append(topology)
        await self.inner.declare(topology)

    async def remove_declared(self) -> None:
        """Remove everything declared so far, newest first. A failure is logged, not
        raised: the scenario's result stands, and the names are in the log line."""
        while self.declared:
            topology = self.declared.pop()
            try:
                await self.inner.remove(topology)
            except Exception as exc:
                names = ", ".join([q.name for q in topology.queues] + list(topology.topics))
                log.warning("could not remove %s: %s", names, exc)
