"""A connection that goes silent (the network blackholes it: no reset, no data) is
noticed through the default AMQP heartbeat within 45 s, and the client dials again;
the worker reports itself not ready (what /readyz serves) as soon as the connection is
known dead, and ready again once a connection is back."""

from __future__ import annotations

import time

import pytest

from mailbag.workers.metrics import Metrics
from tests.conformance.env import eventually
from tests.faults.workload import proxied_worker


@pytest.mark.timeout(240)
async def test_a_blackholed_connection_is_detected_within_45s_with_the_default_heartbeat():
    # Given a worker with metrics, connected through a proxy with the URL naming no heartbeat
    async with proxied_worker("hb", Metrics()) as (proxy, worker):
        await worker.start()
        await eventually(lambda: _true(worker.ready), what="the worker to be ready")
        dialled = proxy.arrivals
        # When the network starts dropping every byte, with the TCP connection left open
        proxy.blackhole = True
        began = time.monotonic()
        # Then the dead connection is noticed within 45 s, the worker not ready from then
        # on (before the client dials a new one), and ready again once the network is back
        await eventually(lambda: _true(not worker.ready), timeout=45, what="/readyz to turn 503")
        not_ready = time.monotonic() - began
        await eventually(lambda: _true(proxy.arrivals > dialled), timeout=15, what="the client to dial again")
        dialling = time.monotonic() - began
        assert "broker connection down" in worker.unready()
        proxy.blackhole = False
        lifted = time.monotonic()
        await eventually(lambda: _true(worker.ready), timeout=30, what="/readyz to turn 200 again")
        print(
            f"not ready {not_ready:.1f}s into the blackhole (dialling again at {dialling:.1f}s); "
            f"ready {time.monotonic() - lifted:.1f}s after it lifted"
        )


async def _true(value: bool) -> bool:
    return value
