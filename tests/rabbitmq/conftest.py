import pytest

from mailbag.broker import Queue, RetryPolicy, Topology
from mailbag.broker.rabbitmq import open_broker
from tests.names import run_name
from tests.proxy import CuttingProxy
from tests.rabbitmq.service import HOST, PORT, amqp_url, remove_declared


@pytest.fixture
def url() -> str:
    return amqp_url()


@pytest.fixture
def names():
    """Unique names for this test's topics and queues."""
    stem = run_name("r")
    return lambda base: f"{stem}-{base}"


@pytest.fixture
async def broker(url):
    b = await open_broker(url)
    yield b
    await b.close()
    await remove_declared(b)


@pytest.fixture
async def proxy():
    async with CuttingProxy(HOST, PORT) as p:
        yield p


@pytest.fixture
def work_queue(broker, names):
    """Declare a queue subscribed to `names("topic")` (retry delays of 0.2s) and return it."""

    async def declare(kind: str = "classic", max_attempts: int = 3, **settings) -> Queue:
        queue = Queue(
            names("q"),
            (names("topic"),),
            retry=RetryPolicy(max_attempts=max_attempts, initial_delay=0.2, multiplier=1.0, max_delay=0.2),
            kind=kind,
            **settings,
        )
        await broker.declare(Topology(queues=(queue,)))
        return queue

    return declare
