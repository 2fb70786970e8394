"""The messages of the order flow and the topics they travel on.

Each event carries the state its consumers need (the items to release, the amount to
refund), so no service has to call another to act on it. Both styles share them:
choreography publishes them as events, the saga sends them back as replies.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pydantic import BaseModel, Field


class Item(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class OrderCreated(BaseModel):
    order_id: str
    customer: str
    items: list[Item]
    amount_cents: int = Field(gt=0)
    address: str


class InventoryReserved(BaseModel):
    order_id: str
    customer: str
    items: list[Item]
    amount_cents: int


class InventoryReservationFailed(BaseModel):
    order_id: str
    reason: str


class InventoryReleased(BaseModel):
    order_id: str


class InventoryReleaseFailed(BaseModel):
    order_id: str
    reason: str


class PaymentCompleted(BaseModel):
    order_id: str
    payment_id: str
    amount_cents: int


class PaymentFailed(BaseModel):
    order_id: str
    items: list[Item]
    reason: str


class PaymentRefunded(BaseModel):
    order_id: str


class OrderRegistered(BaseModel):
    order_id: str


class OrderConfirmed(BaseModel):
    order_id: str
    customer: str


class OrderCancelled(BaseModel):
    order_id: str
    customer: str
    reason: str


@dataclass(frozen=True)
class Topics:
    """Topic and queue names, behind an optional prefix so that runs sharing a broker
    stay apart. Events for choreography, commands (`*.cmd.*`) for the saga."""

    prefix: str = ""
    order_created: str = "orders.created"
    inventory_reserved: str = "inventory.reserved"
    inventory_reservation_failed: str = "inventory.reservation-failed"
    payment_completed: str = "payment.completed"
    payment_failed: str = "payment.failed"
    order_confirmed: str = "orders.confirmed"
    order_cancelled: str = "orders.cancelled"
    register_order: str = "orders.cmd.register"
    cancel_order: str = "orders.cmd.cancel"
    confirm_order: str = "orders.cmd.confirm"
    reserve_inventory: str = "inventory.cmd.reserve"
    release_inventory: str = "inventory.cmd.release"
    charge_payment: str = "payment.cmd.charge"
    refund_payment: str = "payment.cmd.refund"

    def __post_init__(self) -> None:
        for f in fields(self)[1:]:
            object.__setattr__(self, f.name, self.prefix + getattr(self, f.name))

    def queue(self, name: str) -> str:
        return self.prefix + name
