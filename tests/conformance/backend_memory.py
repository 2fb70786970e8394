from contextlib import asynccontextmanager

from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from tests.conformance.env import Backend, Env, Features


def _memory(name: str, **queue_defaults: object) -> Backend:
    @asynccontextmanager
    async def open_env():
        clock = ManualClock()
        broker = MemoryBroker(clock=clock)
        try:
            yield Env(broker, Features(manual_clock=True, queue_defaults=dict(queue_defaults)), clock.advance)
        finally:
            await broker.close()

    return Backend(name, open_env)


BACKENDS = [_memory("memory"), _memory("memory-ordered", ordered=True)]
