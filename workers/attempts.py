"""The attempt number a handler sees, kept true across put-backs that must not use
one up.

Brokers count every receive (`x-delivery-count`, `ApproximateReceiveCount`), and the
broker contract has no way to hand a message back uncounted. So a postponed message
goes back as a fresh copy (`Broker.send` with a delay, then the original is acked):
the broker counts the copy from 1 again, and the copy carries the attempts already
used in `ATTEMPTS_USED`. The attempt is the broker's count plus that header. This
works the same on every broker, and the broker's own attempt limit still bounds each
copy. A crash between the send and the ack leaves two copies; idempotency absorbs it.
"""

from __future__ import annotations

from mailbag.broker import Delivery, Message
from mailbag.broker.headers import ATTEMPTS_USED


def attempt_of(delivery: Delivery) -> int:
    """1 on a message's first try, counting tries made before any postponement."""
    try:
        used = int(delivery.message.headers.get(ATTEMPTS_USED, 0))
    except (TypeError, ValueError):
        used = 0
    return delivery.attempt + max(0, used)


def postponed_copy(delivery: Delivery) -> Message:
    """The copy to re-send: same id, body and headers, with the attempts used so far
    (this try did not run, so it is not one of them)."""
    message = delivery.message
    return message.evolve(headers={**message.headers, ATTEMPTS_USED: attempt_of(delivery) - 1})
