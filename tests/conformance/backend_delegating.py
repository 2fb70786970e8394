"""The bare `Delegating` wrapper around other backends: a wrapper passes the whole
contract through (`unrouted` and `queue_names` included), so every broker wrapper that
subclasses it starts out conforming."""

import dataclasses
from contextlib import asynccontextmanager

from mailbag.broker.delegating import Delegating
from tests.conformance import backend_memory, backend_rabbitmq
from tests.conformance.env import Backend


def _delegating(backend: Backend) -> Backend:
    @asynccontextmanager
    async def open_env():
        async with backend.open() as env:
            yield dataclasses.replace(env, broker=Delegating(env.broker))

    return Backend(f"delegating-{backend.name}", open_env)


BACKENDS = [_delegating(backend_memory.BACKENDS[0]), _delegating(backend_rabbitmq.BACKENDS[0])]
