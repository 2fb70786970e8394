"""Graceful shutdown on signals: SIGTERM or SIGINT stops fetching and gives in-flight
handlers the grace period; unfinished ones are cancelled and their messages released
back to the broker. A second signal cuts the grace period short: the stop then gets
`FORCED_EXIT` seconds more, and whatever is still unsettled goes back to the broker when
the process's connections drop."""

from __future__ import annotations

import asyncio
import logging
import signal

from mailbag.broker import mask_url
from mailbag.workers.runtime import Worker, wait_first

log = logging.getLogger("mailbag.worker")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: after a second signal, the seconds a stop in progress gets before it is abandoned
FORCED_EXIT = 1.0


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
        stop = asyncio.ensure_future(worker.stop())
        forced = asyncio.ensure_future(worker.wait_forced())
        try:
            await asyncio.wait({stop, forced}, return_when=asyncio.FIRST_COMPLETED)
            if not stop.done() and not (await asyncio.wait({stop}, timeout=FORCED_EXIT))[0]:
                log.warning("the stop did not end %gs after the second signal; abandoning it", FORCED_EXIT)
                stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)
        finally:
            forced.cancel()
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    return 0 if len(received) < 2 and not worker.failed.is_set() else 1
