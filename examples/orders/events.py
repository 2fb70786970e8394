"""The events of the order flow. Each carries the state its consumers need."""

from pydantic import BaseModel, Field


class Item(BaseModel):
    sku: str
    quantity: int = Field(gt=0)


class OrderPlaced(BaseModel):
    order_id: str
    items: list[Item]
    amount_cents: int = Field(gt=0)
    address: str


class InventoryReserved(BaseModel):
    order_id: str
    items: list[Item]
    amount_cents: int


class PaymentCompleted(BaseModel):
    order_id: str
    amount_cents: int


class PaymentFailed(BaseModel):
    order_id: str
    items: list[Item]
    reason: str


class OrderFinished(BaseModel):
    order_id: str
    status: str  # "confirmed" | "cancelled"


TOPICS = {
    "placed": "orders.placed",
    "reserved": "inventory.reserved",
    "paid": "payment.completed",
    "payment_failed": "payment.failed",
    "finished": "orders.finished",
}
