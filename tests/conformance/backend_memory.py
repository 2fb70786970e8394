from contextlib import asynccontextmanager
from functools import partial

from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from tests.conformance.env import Backend, Env, Features


def _memory(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        clock = ManualClock()
        broker = MemoryBroker(clock=clock)
        try:
            features = Features(manual_clock=True, queue_defaults=dict(queue_defaults))
            yield Env(broker, features, clock.advance, partial(_delete_queue, broker))
        finally:
            await broker.close()

    return Backend(name, open_env)


async def _delete_queue(broker: MemoryBroker, name: str) -> None:
    del broker._queues[name]


BACKENDS = [_memory("memory"), _memory("memory-ordered", ordered=True)]
