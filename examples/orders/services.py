"""The four services' own state and rules, free of any messaging: both the
choreography and the saga wire these same objects to the broker.

Every operation is idempotent per order, because messages arrive at least once: a
second reserve, charge, release or refund for the same order changes nothing. A
service also remembers what it undid, and refuses a late reserve or charge for an
order it already released or refunded (the command may overtake its compensation).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from mailbag.examples.orders.events import Item, OrderCreated
from mailbag.examples.orders.timeline import Timeline


class Refused(Exception):
    """The service says no for good (out of stock, card declined): a failed reply."""


class Unavailable(Exception):
    """The service cannot act right now (its database is down): a failed reply the
    caller may try again later."""


def order_number(order_id: str) -> int:
    tail = order_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass
class Inventory:
    stock: dict[str, int] = field(default_factory=lambda: {"book": 10_000, "pen": 10_000})
    reservations: dict[str, list[Item]] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)

    def reserve(self, order_id: str, items: list[Item]) -> None:
        if order_id in self.reservations:
            return
        if order_id in self.released:
            raise Refused("order already released")
        short = [i.sku for i in items if self.stock.get(i.sku, 0) < i.quantity]
        if short:
            raise Refused(f"out of stock: {', '.join(short)}")
        for item in items:
            self.stock[item.sku] -= item.quantity
        self.reservations[order_id] = list(items)

    def release(self, order_id: str) -> bool:
        """Put the order's items back; False if there was nothing (left) to release."""
        self.released.add(order_id)
        items = self.reservations.pop(order_id, None)
        for item in items or ():
            self.stock[item.sku] += item.quantity
        return items is not None

    @property
    def reserved(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for items in self.reservations.values():
            for item in items:
                held[item.sku] = held.get(item.sku, 0) + item.quantity
        return held


@dataclass
class Payments:
    """Declines the card of every `fail_every`-th order (0: never)."""

    fail_every: int = 0
    charges: dict[str, tuple[str, int]] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)

    def charge(self, order_id: str, amount_cents: int) -> str:
        """The payment id; the same one again for a repeated charge."""
        if order_id in self.charges:
            return self.charges[order_id][0]
        if order_id in self.refunded:
            raise Refused("order already refunded")
        if self.fail_every and order_number(order_id) % self.fail_every == 0:
            raise Refused("card declined")
        payment_id = f"pay-{uuid.uuid4().hex[:8]}"
        self.charges[order_id] = (payment_id, amount_cents)
        return payment_id

    def refund(self, order_id: str) -> bool:
        self.refunded.add(order_id)
        return self.charges.pop(order_id, None) is not None


@dataclass
class Orders:
    orders: dict[str, OrderCreated] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    def create(self, order: OrderCreated) -> None:
        self.orders.setdefault(order.order_id, order)
        self.status.setdefault(order.order_id, "pending")

    def confirm(self, order_id: str) -> None:
        if self.status.get(order_id) == "cancelled":
            raise Refused("order already cancelled")
        self.status[order_id] = "confirmed"

    def cancel(self, order_id: str) -> None:
        self.status[order_id] = "cancelled"

    def count(self, status: str) -> int:
        return sum(1 for s in self.status.values() if s == status)


@dataclass
class Notifier:
    told: dict[str, str] = field(default_factory=dict)

    def tell(self, order_id: str, customer: str, outcome: str) -> bool:
        """Send the customer one message per order; False for a repeat."""
        if order_id in self.told:
            return False
        self.told[order_id] = outcome
        return True


@dataclass
class Shop:
    """The four services of one run, and the timeline they write to."""

    inventory: Inventory = field(default_factory=Inventory)
    payments: Payments = field(default_factory=Payments)
    orders: Orders = field(default_factory=Orders)
    notifier: Notifier = field(default_factory=Notifier)
    timeline: Timeline = field(default_factory=Timeline)

    def tell_customer(self, order_id: str, customer: str, outcome: str) -> None:
        """The notification service: one message per order, however often asked."""
        if self.notifier.tell(order_id, customer, outcome):
            self.timeline.record("notification", order_id, f"customer told: order {outcome}")
        self.timeline.customer_told(order_id)


def sample_orders(count: int) -> list[OrderCreated]:
    """Orders 1..count: n books and a pen each, for the demo and the tests."""
    return [
        OrderCreated(
            order_id=f"order-{n}",
            customer=f"customer-{n}",
            items=[Item(sku="book", quantity=n), Item(sku="pen", quantity=1)],
            amount_cents=1250 * n,
            address=f"{n} Queue Street",
        )
        for n in range(1, count + 1)
    ]
