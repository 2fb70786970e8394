"""A user's own test file, as the docs tell them to write it: it imports only `mailbag`
and `mailbag.testing` and uses the `mailbag_bus` fixture. `test_plugin.py` copies it
into a folder outside the repository and runs plain `pytest` there."""

import pytest

from mailbag import App, Context, RetryPolicy


class Flaky:
    """A dependency that fails `failures` times, then answers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def call(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("upstream down")


@pytest.fixture
def backoff(mailbag_broker_url: str) -> float:
    """A minute where time is virtual (memory://, SQS on moto); a real RabbitMQ waits
    for real, so there a fifth of a second."""
    return 0.2 if mailbag_broker_url.startswith("amqp") else 60.0


@pytest.mark.asyncio
async def test_a_handler_that_fails_twice_is_handled_on_its_third_attempt(mailbag_bus, mailbag_broker_url, backoff):
    # Given a handler whose dependency fails twice, with a minute of backoff (see `backoff`)
    upstream = Flaky(failures=2)
    app = App("shop")

    @app.handler("orders.placed", retry=RetryPolicy(max_attempts=5, initial_delay=backoff))
    async def reserve(order: dict, ctx: Context) -> None:
        upstream.call()

    async with mailbag_bus(app) as bus:
        # When an order is placed and everything settles
        message_id = await bus.publish("orders.placed", {"order_id": "o-1"})
        await bus.settle(timeout=60)
        outcome = bus.outcome(message_id)
    # Then it was handled on its third attempt
    assert outcome.status == "handled"
    assert outcome.attempts == 3
