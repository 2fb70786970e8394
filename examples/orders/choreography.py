"""Choreography: each service reacts to the others' events; no one is in charge.

    orders.created -> inventory reserves -> inventory.reserved | inventory.reservation-failed
    inventory.reserved -> payment charges -> payment.completed | payment.failed
    payment.failed -> inventory releases the reservation
    payment.completed | payment.failed | inventory.reservation-failed
        -> orders confirms or cancels -> orders.confirmed | orders.cancelled
    orders.confirmed | orders.cancelled -> notification tells the customer

Notification comes last and nothing listens to it: a notification that keeps failing
ends in its dead-letter queue, and the order stays what it is. Every event published
here has a queue that takes it, so the flow drops nothing as unroutable.
"""

from __future__ import annotations

from mailbag.broker import Broker, Message
from mailbag.broker.codec import encode
from mailbag.examples.orders.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    PaymentFailed,
    Topics,
)
from mailbag.examples.orders.services import Refused, Shop
from mailbag.workers import App, Context


def build_app(shop: Shop, topics: Topics = Topics()) -> App:
    t = topics
    app = App(t.queue("shop"))
    record = shop.timeline.record

    @app.handler(t.order_created, queue=t.queue("inventory.reserve"), model=OrderCreated)
    async def reserve(order: OrderCreated, ctx: Context) -> None:
        try:
            shop.inventory.reserve(order.order_id, order.items)
        except Refused as exc:
            record("inventory", order.order_id, f"cannot reserve: {exc}")
            failed = InventoryReservationFailed(order_id=order.order_id, reason=str(exc))
            await ctx.publish(t.inventory_reservation_failed, failed, key=order.order_id)
            return
        record("inventory", order.order_id, f"reserved {sum(i.quantity for i in order.items)} item(s)")
        reserved = InventoryReserved(**order.model_dump(include={"order_id", "customer", "items", "amount_cents"}))
        await ctx.publish(t.inventory_reserved, reserved, key=order.order_id)

    @app.handler(t.inventory_reserved, queue=t.queue("payment.charge"), model=InventoryReserved)
    async def charge(reserved: InventoryReserved, ctx: Context) -> None:
        amount = f"{reserved.amount_cents / 100:.2f}"
        try:
            payment_id = shop.payments.charge(reserved.order_id, reserved.amount_cents)
        except Refused as exc:
            record("payment", reserved.order_id, f"{exc} for {amount}")
            failed = PaymentFailed(order_id=reserved.order_id, items=reserved.items, reason=str(exc))
            await ctx.publish(t.payment_failed, failed, key=reserved.order_id)
            return
        record("payment", reserved.order_id, f"charged {amount}")
        paid = PaymentCompleted(order_id=reserved.order_id, payment_id=payment_id, amount_cents=reserved.amount_cents)
        await ctx.publish(t.payment_completed, paid, key=reserved.order_id)

    @app.handler(t.payment_failed, queue=t.queue("inventory.release"), model=PaymentFailed)
    async def release(failed: PaymentFailed) -> None:
        if shop.inventory.release(failed.order_id):
            record("inventory", failed.order_id, "released the reservation")

    @app.handler(t.payment_completed, queue=t.queue("orders.status"), model=PaymentCompleted)
    async def confirm(paid: PaymentCompleted, ctx: Context) -> None:
        shop.orders.confirm(paid.order_id)
        record("orders", paid.order_id, "order confirmed")
        customer = shop.orders.orders[paid.order_id].customer
        await ctx.publish(
            t.order_confirmed, OrderConfirmed(order_id=paid.order_id, customer=customer), key=paid.order_id
        )

    async def cancel(order_id: str, reason: str, ctx: Context) -> None:
        shop.orders.cancel(order_id)
        record("orders", order_id, f"order cancelled ({reason})")
        customer = shop.orders.orders[order_id].customer
        cancelled = OrderCancelled(order_id=order_id, customer=customer, reason=reason)
        await ctx.publish(t.order_cancelled, cancelled, key=order_id)

    @app.handler(t.payment_failed, queue=t.queue("orders.status"), model=PaymentFailed)
    async def cancel_unpaid(failed: PaymentFailed, ctx: Context) -> None:
        await cancel(failed.order_id, failed.reason, ctx)

    @app.handler(t.inventory_reservation_failed, queue=t.queue("orders.status"), model=InventoryReservationFailed)
    async def cancel_unreserved(failed: InventoryReservationFailed, ctx: Context) -> None:
        await cancel(failed.order_id, failed.reason, ctx)

    @app.handler(t.order_confirmed, queue=t.queue("notification.send"), model=OrderConfirmed)
    async def tell_confirmed(done: OrderConfirmed) -> None:
        shop.tell_customer(done.order_id, done.customer, "confirmed")

    @app.handler(t.order_cancelled, queue=t.queue("notification.send"), model=OrderCancelled)
    async def tell_cancelled(done: OrderCancelled) -> None:
        shop.tell_customer(done.order_id, done.customer, "cancelled")

    return app


async def place_order(broker: Broker, shop: Shop, order: OrderCreated, topics: Topics = Topics()) -> None:
    """The orders service takes an order and announces it."""
    shop.orders.create(order)
    shop.timeline.record(
        "orders", order.order_id, f"created, {len(order.items)} line(s), {order.amount_cents / 100:.2f}"
    )
    body, content_type, type_name = encode(order)
    created = Message(
        topics.order_created,
        body,
        content_type=content_type,
        type=type_name,
        correlation_id=order.order_id,
        ordering_key=order.order_id,
    )
    await broker.publish(topics.order_created, [created])
