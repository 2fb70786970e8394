"""Orchestration: one saga drives the order through the services with commands, and
undoes what was done, in reverse order, when a step fails or times out.

    register (orders)   undo: cancel (orders)
    reserve (inventory) undo: release (inventory)
    charge (payment)    undo: refund (payment)
    confirm (orders)

Every command carries the saga's data (the created order, plus what earlier replies
added, e.g. the payment id), so no participant has to ask anyone. Notification listens
to the saga's finished event and is no step of it: it can fail without undoing anything.
"""

from __future__ import annotations

from mailbag.examples.orders.events import (
    InventoryReleased,
    InventoryReleaseFailed,
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    OrderRegistered,
    PaymentCompleted,
    PaymentFailed,
    PaymentRefunded,
    Topics,
)
from mailbag.examples.orders.services import Refused, Shop, Unavailable
from mailbag.workers import App, Context
from mailbag.workers.saga import Saga, SagaFinished, Step, reply


def order_saga(topics: Topics = Topics(), *, timeout: float = 30.0) -> Saga:
    """The order saga; `timeout` bounds the wait for each reply."""
    t = topics
    return Saga(
        t.queue("order-saga"),
        steps=(
            Step("register", t.register_order, OrderRegistered, t.cancel_order, OrderCancelled, timeout),
            Step("reserve", t.reserve_inventory, InventoryReserved, t.release_inventory, InventoryReleased, timeout),
            Step("charge", t.charge_payment, PaymentCompleted, t.refund_payment, PaymentRefunded, timeout),
            Step("confirm", t.confirm_order, OrderConfirmed, timeout=timeout),
        ),
    )


def build_participants(shop: Shop, saga: Saga, topics: Topics = Topics()) -> App:
    """The services' command handlers (one queue per service) and the notification."""
    t = topics
    app = App(t.queue("shop-saga"), topics=(saga.reply_topic,))
    record = shop.timeline.record
    orders_q, inventory_q, payment_q = (
        t.queue("orders.commands"),
        t.queue("inventory.commands"),
        t.queue("payment.commands"),
    )

    @app.handler(t.register_order, queue=orders_q, model=OrderCreated)
    async def register(order: OrderCreated, ctx: Context) -> None:
        shop.orders.create(order)
        record("orders", order.order_id, "order registered, pending")
        await reply(ctx, OrderRegistered(order_id=order.order_id))

    @app.handler(t.cancel_order, queue=orders_q, model=OrderCreated)
    async def cancel(order: OrderCreated, ctx: Context) -> None:
        shop.orders.cancel(order.order_id)
        record("orders", order.order_id, "order cancelled")
        await reply(ctx, OrderCancelled(order_id=order.order_id, customer=order.customer, reason="saga compensated"))

    @app.handler(t.confirm_order, queue=orders_q, model=OrderCreated)
    async def confirm(order: OrderCreated, ctx: Context) -> None:
        shop.orders.confirm(order.order_id)
        record("orders", order.order_id, "order confirmed")
        await reply(ctx, OrderConfirmed(order_id=order.order_id, customer=order.customer))

    @app.handler(t.reserve_inventory, queue=inventory_q, model=OrderCreated)
    async def reserve(order: OrderCreated, ctx: Context) -> None:
        try:
            shop.inventory.reserve(order.order_id, order.items)
        except Refused as exc:
            record("inventory", order.order_id, f"cannot reserve: {exc}")
            await reply(ctx, InventoryReservationFailed(order_id=order.order_id, reason=str(exc)))
            return
        record("inventory", order.order_id, f"reserved {sum(i.quantity for i in order.items)} item(s)")
        await reply(
            ctx, InventoryReserved(**order.model_dump(include={"order_id", "customer", "items", "amount_cents"}))
        )

    @app.handler(t.release_inventory, queue=inventory_q, model=OrderCreated)
    async def release(order: OrderCreated, ctx: Context) -> None:
        try:
            released = shop.inventory.release(order.order_id)
        except Unavailable as exc:
            record("inventory", order.order_id, f"cannot release now: {exc}")
            await reply(ctx, InventoryReleaseFailed(order_id=order.order_id, reason=str(exc)))
            return
        if released:
            record("inventory", order.order_id, "released the reservation")
        await reply(ctx, InventoryReleased(order_id=order.order_id))

    @app.handler(t.charge_payment, queue=payment_q, model=OrderCreated)
    async def charge(order: OrderCreated, ctx: Context) -> None:
        amount = f"{order.amount_cents / 100:.2f}"
        try:
            payment_id = shop.payments.charge(order.order_id, order.amount_cents)
        except Refused as exc:
            record("payment", order.order_id, f"{exc} for {amount}")
            await reply(ctx, PaymentFailed(order_id=order.order_id, items=order.items, reason=str(exc)))
            return
        record("payment", order.order_id, f"charged {amount}")
        await reply(
            ctx, PaymentCompleted(order_id=order.order_id, payment_id=payment_id, amount_cents=order.amount_cents)
        )

    @app.handler(t.refund_payment, queue=payment_q, model=OrderCreated)
    async def refund(order: OrderCreated, ctx: Context) -> None:
        if shop.payments.refund(order.order_id):
            record("payment", order.order_id, "refunded")
        await reply(ctx, PaymentRefunded(order_id=order.order_id))

    @app.handler(saga.finished_topic, queue=t.queue("notification.send"), model=SagaFinished)
    async def tell(finished: SagaFinished) -> None:
        outcome = "confirmed" if finished.status == "completed" else "cancelled"
        shop.tell_customer(finished.saga_id, str(finished.data.get("customer", "")), outcome)

    return app
