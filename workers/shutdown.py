"""Graceful shutdown on signals: SIGTERM or SIGINT stops fetching and gives in-flight
handlers the grace period; unfinished ones are cancelled and their messages released
back to the broker. A second signal cuts the grace period short."""

from __future__ import annotations

import asyncio
import logging
import signal

from mailbag.broker import mask_url
from mailbag.workers.runtime import Worker, wait_first

log = logging.getLogger("mailbag.worker")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(worker: Worker) -> int:
    """Run `worker` until a signal (or until one of its consumers fails, so that the
    process exits and its supervisor starts a new one), then stop it. Returns the exit
    status: 0 after a graceful stop on a signal, 1 when a second signal forced it or a
    consumer failed."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("%s: stopping, in-flight handlers get %gs", signal.Signals(signum).name, worker.grace_period)
            stopping.set()
        else:
            log.warning("%s again: forcing exit, in-flight messages go back", signal.Signals(signum).name)
            worker.force()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await worker.start()
        log.info(
            "worker for %s consuming %s on %s", worker.app.name, ", ".join(worker.queues), mask_url(worker.broker.url)
        )
        await wait_first(stopping, worker.failed)
        if worker.failed.is_set() and not received:
            log.error("a consumer failed: stopping, in-flight handlers get %gs", worker.grace_period)
        await worker.stop()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return 0 if len(received) < 2 and not worker.failed.is_set() else 1
