"""`mailbag worker MODULE:APP`: run an app's handlers until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from broker import connect, mask_url
from mailbag.cli.common import add_broker_option, load_app
from workers import Worker

log = logging.getLogger("mailbag.worker")


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("worker", help="run an app's handlers until SIGINT/SIGTERM")
    p.add_argument("app", metavar="MODULE:APP", help="the App to run, e.g. myservice.handlers:app")
    add_broker_option(p)
    p.add_argument("--concurrency", type=int, default=10, metavar="N", help="handlers in flight at once")
    p.add_argument("--prefetch", type=int, default=None, metavar="N", help="unsettled deliveries per queue")
    p.add_argument("--queue", action="append", default=None, metavar="Q", help="consume only this queue (repeat)")
    p.add_argument("--grace-period", type=float, default=30.0, metavar="S", help="time in-flight handlers get to finish")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            raise SystemExit(1)  # a second signal forces exit
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with await connect(args.broker) as broker:
        worker = Worker(
            app, broker, concurrency=args.concurrency, prefetch=args.prefetch, queues=args.queue,
            grace_period=args.grace_period,
        )
        await worker.start()
        log.info("worker for %s consuming %s on %s", app.name, ", ".join(worker.queues), mask_url(args.broker))
        await stop.wait()
        log.info("stopping: finishing in-flight handlers (grace %ss)", args.grace_period)
        await worker.stop()
    return 0
