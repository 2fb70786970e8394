"""A worker process for the SIGKILL test: it takes messages and holds them unacked,
printing `holding <id>` for each, until it is killed.

    python -m tests.rabbitmq.holding_worker URL TOPIC QUEUE
"""

import asyncio
import sys

from mailbag.broker.rabbitmq import open_broker
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores.memory import MemoryStore


def make_app(topic: str, queue: str, handle) -> App:
    app = App("holding")
    app.handler(topic, queue=queue)(handle)
    return app


async def main(url: str, topic: str, queue: str) -> None:
    async def hold(payload, ctx: Context) -> None:
        print(f"holding {ctx.message_id}", flush=True)
        await asyncio.Event().wait()

    broker = await open_broker(url)
    await Worker(make_app(topic, queue, hold), broker, concurrency=3, store=MemoryStore()).run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
