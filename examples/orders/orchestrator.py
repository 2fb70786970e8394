"""The order saga's orchestrator as a process of its own:

    python -m mailbag.examples.orders.orchestrator --broker amqp://guest:guest@127.0.0.1/ \\
        --store sqlite:///sagas.db --orders 20

It resumes every saga its store holds as active, begins orders 1..N (an order already
begun is left as it is, so a restarted process can be given the same arguments), and
runs until SIGTERM or SIGINT. Run the participants beside it:
`mailbag worker mailbag.examples.orders.app:participants --broker ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from mailbag.broker import connect, mask_url
from mailbag.examples.orders.events import Topics
from mailbag.examples.orders.saga import order_saga
from mailbag.examples.orders.services import sample_orders
from mailbag.workers.saga import Orchestrator
from mailbag.workers.saga.store import open_store

log = logging.getLogger("mailbag.examples.orders.orchestrator")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m mailbag.examples.orders.orchestrator", description=__doc__.splitlines()[0]
    )
    p.add_argument("--broker", default=os.environ.get("MAILBAG_BROKER_URL", "memory://"), metavar="URL")
    p.add_argument("--store", default="sqlite:///sagas.db", metavar="URL", help="sqlite:///file.db or postgresql://...")
    p.add_argument("--prefix", default="", help="prefix of every topic and queue name")
    p.add_argument("--orders", type=int, default=0, metavar="N", help="begin orders 1..N")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="how long a step may take")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    broker = await connect(args.broker)
    store = await open_store(args.store)
    try:
        saga = order_saga(Topics(args.prefix), timeout=args.timeout)
        async with Orchestrator(saga, store, broker) as orchestrator:
            for order in sample_orders(args.orders):
                await orchestrator.begin(order.order_id, order.model_dump(mode="json"))
            log.info("orchestrating %s on %s", saga.name, mask_url(args.broker))
            await stop.wait()
    finally:
        await store.close()
        await broker.close()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(run(parse(argv)))


if __name__ == "__main__":
    main()
