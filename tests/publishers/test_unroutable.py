"""A publish no queue takes, through the `Publisher`, on every broker in `LINKS`: by
default it succeeds; with `mandatory` it raises `Unroutable` at once, is never retried
and never opens the circuit, so publishes to healthy topics carry on."""

from collections.abc import Sequence

import pytest

from mailbag.broker import Message, Topology, Unroutable
from mailbag.broker.delegating import Delegating
from mailbag.publishers import BreakerPolicy, Publisher, PublisherSettings, ReservedHeader
from tests.conformance.env import drain

#: a breaker that would open after two counted faults
TOUCHY = PublisherSettings(deadline=5.0, attempt_timeout=2.0, initial_backoff=0.02, breaker=BreakerPolicy(failures=2))


class Counting(Delegating):
    """Counts publish calls that reach the broker."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.calls = 0

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        self.calls += 1
        await super().publish(topic, messages, mandatory=mandatory)

    async def close(self) -> None:
        """The wrapped broker belongs to the link."""


async def test_mandatory_unroutable_is_permanent_and_never_opens_the_circuit(link):
    # Given a topic nobody subscribes to, a healthy one, and a publisher whose circuit opens after 2 faults
    nobody, orders = link.name("nobody"), link.name("orders")
    await link.observer.declare(Topology(topics=(nobody,)))
    queue = await link.queue(orders)
    counting = Counting(link.broker)
    publisher = Publisher(counting, settings=TOUCHY, mandatory=True)
    # When five mandatory publishes go to the topic nobody takes
    for i in range(5):
        with pytest.raises(Unroutable, match=nobody):
            await publisher.publish(nobody, {"n": i})
    # Then each was tried once, the circuit stays closed, and the healthy topic still works
    assert counting.calls == 5
    assert publisher.breaker.state == "closed" and publisher.breaker.failures == 0
    sent = await publisher.publish(orders, {"n": 1})
    async with link.observer.consume(queue.name) as consumer:
        [got] = await drain(consumer, 1)
    assert got.message.id == sent


async def test_by_default_a_publish_no_queue_takes_succeeds_and_a_call_can_ask_for_mandatory(link):
    nobody = link.name("nobody")
    await link.observer.declare(Topology(topics=(nobody,)))
    publisher = Publisher(link.broker, settings=TOUCHY)
    message_id = await publisher.publish(nobody, {"n": 1})
    assert message_id
    with pytest.raises(Unroutable):
        await publisher.publish(nobody, {"n": 2}, mandatory=True)
    with pytest.raises(Unroutable):
        await publisher.publish_many(nobody, [{"n": 3}], mandatory=True)
    assert publisher.breaker.state == "closed"


async def test_a_header_in_the_reserved_namespace_is_refused_before_sending(link):
    orders = link.name("orders")
    await link.queue(orders)
    publisher = Publisher(link.broker, settings=TOUCHY)
    with pytest.raises(ReservedHeader, match="x-mailbag-attempt"):
        await publisher.publish(orders, {"n": 1}, headers={"tenant": "acme", "x-mailbag-attempt": 99})
    with pytest.raises(ReservedHeader):
        await publisher.publish(orders, {"n": 1}, headers={"X-Mailbag-Dead-Reason": "forged"})
