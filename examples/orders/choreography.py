"""Choreography: each service reacts to the events of the others. No one is in charge."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from examples.orders.events import (
    TOPICS,
    InventoryReserved,
    OrderFinished,
    OrderPlaced,
    PaymentCompleted,
    PaymentFailed,
)
from workers import App, Context


@dataclass
class Timeline:
    """What happened, in order, for the demo to print and tests to read."""

    started: float = field(default_factory=time.monotonic)
    entries: list[tuple[float, str, str, str]] = field(default_factory=list)
    reserved: dict[str, int] = field(default_factory=dict)
    finished: dict[str, str] = field(default_factory=dict)
    notified: set[str] = field(default_factory=set)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    expected: int = 0

    def record(self, service: str, order_id: str, what: str) -> None:
        self.entries.append((time.monotonic() - self.started, service, order_id, what))

    def notify(self, order_id: str) -> None:
        self.notified.add(order_id)
        if len(self.notified) >= self.expected:
            self.all_done.set()


def build_app(timeline: Timeline, *, fail_payment_every: int = 3) -> App:
    app = App("shop")

    @app.handler(TOPICS["placed"], queue="inventory.reserve", model=OrderPlaced)
    async def reserve(order: OrderPlaced, ctx: Context) -> None:
        for item in order.items:
            timeline.reserved[item.sku] = timeline.reserved.get(item.sku, 0) + item.quantity
        count = sum(i.quantity for i in order.items)
        timeline.record("inventory", order.order_id, f"reserved {count} item(s)")
        await ctx.publish(
            TOPICS["reserved"],
            InventoryReserved(order_id=order.order_id, items=order.items, amount_cents=order.amount_cents),
            key=order.order_id,
        )

    @app.handler(TOPICS["reserved"], queue="payment.charge", model=InventoryReserved)
    async def charge(reserved: InventoryReserved, ctx: Context) -> None:
        number = int(reserved.order_id.rsplit("-", 1)[-1])
        if fail_payment_every and number % fail_payment_every == 0:
            timeline.record("payment", reserved.order_id, f"card declined for {reserved.amount_cents / 100:.2f}")
            await ctx.publish(
                TOPICS["payment_failed"],
                PaymentFailed(order_id=reserved.order_id, items=reserved.items, reason="card declined"),
                key=reserved.order_id,
            )
            return
        timeline.record("payment", reserved.order_id, f"charged {reserved.amount_cents / 100:.2f}")
        await ctx.publish(
            TOPICS["paid"], PaymentCompleted(order_id=reserved.order_id, amount_cents=reserved.amount_cents)
        )

    @app.handler(TOPICS["payment_failed"], queue="inventory.release", model=PaymentFailed)
    async def release(failed: PaymentFailed) -> None:
        for item in failed.items:
            timeline.reserved[item.sku] -= item.quantity
        timeline.record("inventory", failed.order_id, "released the reservation")

    @app.handler(TOPICS["paid"], queue="orders.status", model=PaymentCompleted)
    async def confirm(paid: PaymentCompleted, ctx: Context) -> None:
        timeline.finished[paid.order_id] = "confirmed"
        timeline.record("orders", paid.order_id, "order confirmed")
        await ctx.publish(TOPICS["finished"], OrderFinished(order_id=paid.order_id, status="confirmed"))

    @app.handler(TOPICS["payment_failed"], queue="orders.status", model=PaymentFailed)
    async def cancel(failed: PaymentFailed, ctx: Context) -> None:
        timeline.finished[failed.order_id] = "cancelled"
        timeline.record("orders", failed.order_id, f"order cancelled ({failed.reason})")
        await ctx.publish(TOPICS["finished"], OrderFinished(order_id=failed.order_id, status="cancelled"))

    @app.handler(TOPICS["finished"], queue="notification.send", model=OrderFinished)
    async def notify(done: OrderFinished) -> None:
        timeline.record("notification", done.order_id, f"customer told: order {done.status}")
        timeline.notify(done.order_id)

    return app
