"""The consumer the crash scenario kills: `python -m mailbag.harness.crash_child QUEUE COUNT`,
with the target URL in $MAILBAG_HARNESS_URL. It takes COUNT deliveries, prints each
message id on its own line, never settles one, and waits to be killed."""

from __future__ import annotations

import asyncio
import os
import sys

from mailbag.harness.scenarios.crash import URL_VARIABLE, topology
from mailbag.harness.target import Target


async def hold(queue: str, count: int) -> None:
    target = Target.parse(os.environ[URL_VARIABLE])
    broker = await target.open()
    await broker.declare(topology(target, queue))
    consumer = broker.consume(queue, prefetch=count)
    for _ in range(count):
        delivery = await anext(consumer)
        print(delivery.message.id, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(hold(sys.argv[1], int(sys.argv[2])))
