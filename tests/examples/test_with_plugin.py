"""The order flow tested as a user of mailbag tests their own services: only the
pytest plugin's `mailbag_bus` fixture, and assertions on the services' state and on
what became of each message. Runs on memory:// in virtual time, or on each
`--mailbag-broker`."""

from mailbag.examples.orders.choreography import build_app
from mailbag.examples.orders.events import Item, OrderCreated, Topics
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Payments, Shop, Unavailable
from mailbag.workers.saga import SagaFinished

TOPICS = Topics()


def an_order(n: int, quantity: int = 1) -> OrderCreated:
    return OrderCreated(
        order_id=f"order-{n}",
        customer=f"customer-{n}",
        items=[Item(sku="book", quantity=quantity)],
        amount_cents=1500,
        address="1 Queue Street",
    )


async def place(bus, shop: Shop, order: OrderCreated) -> str:
    """What the orders service does when a customer orders: record it, announce it."""
    shop.orders.create(order)
    return await bus.publish(TOPICS.order_created, order, key=order.order_id, correlation_id=order.order_id)


async def test_a_paid_order_is_confirmed_and_its_customer_told_once(mailbag_bus):
    # Given the four services reacting to each other's events
    shop = Shop()
    async with mailbag_bus(build_app(shop)) as bus:
        # When an order is placed
        message_id = await place(bus, shop, an_order(1))
        await bus.settle()

        # Then it was reserved, paid, confirmed and the customer told
        assert bus.outcome(message_id).status == "handled"
        assert shop.orders.status["order-1"] == "confirmed"
        assert shop.inventory.reserved == {"book": 1}
        assert shop.notifier.told == {"order-1": "confirmed"}
        [confirmed] = bus.published(TOPICS.order_confirmed)
        assert confirmed.correlation_id == "order-1"


async def test_a_declined_card_releases_the_stock_and_cancels_the_order(mailbag_bus):
    # Given a card processor that declines every order
    shop = Shop(payments=Payments(fail_every=1))
    stock = dict(shop.inventory.stock)
    async with mailbag_bus(build_app(shop)) as bus:
        # When an order is placed
        await place(bus, shop, an_order(1, quantity=3))
        await bus.settle()

        # Then the reservation is released and the customer told of the cancellation
        assert shop.orders.status["order-1"] == "cancelled"
        assert shop.inventory.stock == stock
        assert shop.inventory.released == {"order-1"}
        assert shop.notifier.told == {"order-1": "cancelled"}


async def test_an_order_out_of_stock_is_cancelled_without_charging(mailbag_bus):
    shop = Shop()
    async with mailbag_bus(build_app(shop)) as bus:
        await place(bus, shop, an_order(1, quantity=1_000_000))
        await bus.settle()
    assert shop.orders.status["order-1"] == "cancelled"
    assert shop.payments.charges == {}


class PaymentsDown(Payments):
    def charge(self, order_id: str, amount_cents: int) -> str:
        raise Unavailable("payment database down")


async def test_a_saga_whose_payment_never_answers_is_compensated_after_its_timeout(mailbag_bus):
    # Given the saga's participants, with the payment service down for good
    shop = Shop(payments=PaymentsDown())
    saga = order_saga(TOPICS, timeout=120)
    async with mailbag_bus(build_participants(shop, saga)) as bus:
        orchestrator = await bus.orchestrator(saga)
        # When an order's saga begins
        await orchestrator.begin("order-1", an_order(1).model_dump(mode="json"))
        await bus.settle()

        # Then the charge went to the dead-letter queue after its retries, the step
        # timed out (two virtual minutes), and the saga undid the reservation
        [dead] = await bus.dead_letters(TOPICS.queue("payment.commands"))
        assert dead.error_type == "Unavailable"
        [finished] = bus.published(saga.finished_topic)
        outcome = SagaFinished.model_validate_json(finished.body)
        assert outcome.status == "compensated" and "charge timed out after 120s" in (outcome.reason or "")
        assert shop.inventory.reserved == {} and shop.orders.status["order-1"] == "cancelled"
        assert shop.notifier.told == {"order-1": "cancelled"}
