"""Header names the broker layer stamps on messages, kept in one place.

Dead-letter headers travel with the message into the dead-letter queue so anyone
reading it (our `dlq` tools or a plain client) can see why it is there.
"""

import socket
import traceback
from datetime import UTC, datetime

PREFIX = "x-mailbag-"

DEAD_REASON = "x-mailbag-dead-reason"
ERROR_TYPE = "x-mailbag-error-type"
ERROR_MESSAGE = "x-mailbag-error-message"
TRACEBACK = "x-mailbag-traceback"
ATTEMPTS = "x-mailbag-attempts"
ORIGIN_QUEUE = "x-mailbag-origin-queue"
ORIGIN_TOPIC = "x-mailbag-origin-topic"
FAILED_AT = "x-mailbag-failed-at"
WORKER_HOST = "x-mailbag-host"
#: attempts a message had used before it went back as a fresh copy that did not count one
#: (a postpone on SQS); the adapter adds it to the broker's receive count
ATTEMPTS_USED = "x-mailbag-attempts-used"

DEAD_LETTER_HEADERS = (
    DEAD_REASON,
    ERROR_TYPE,
    ERROR_MESSAGE,
    TRACEBACK,
    ATTEMPTS,
    ORIGIN_QUEUE,
    ORIGIN_TOPIC,
    FAILED_AT,
    WORKER_HOST,
)

#: reason recorded when the broker itself gave up on a message (attempt limit)
DELIVERY_LIMIT_EXCEEDED = "delivery limit exceeded"
#: reason recorded for a delayed message whose queue was deleted while it waited, read
#: from where the broker keeps such messages (RabbitMQ: `mailbag.delay.orphans`)
ORPHANED = "its queue was deleted while it waited out a delay"

TRACEBACK_LIMIT = 2000


def dead_letter_stamp(
    message_topic: str, queue: str, attempts: int, reason: str, error: BaseException | None
) -> dict[str, str | int]:
    """The headers to add to a message as it enters the dead-letter queue."""
    stamp: dict[str, str | int] = {
        DEAD_REASON: reason,
        ATTEMPTS: attempts,
        ORIGIN_QUEUE: queue,
        ORIGIN_TOPIC: message_topic,
        FAILED_AT: datetime.now(UTC).isoformat(),
        WORKER_HOST: socket.gethostname(),
    }
    if error is not None:
        stamp[ERROR_TYPE] = type(error).__qualname__
        stamp[ERROR_MESSAGE] = str(error)[:TRACEBACK_LIMIT]
        tb = "".join(traceback.format_exception(error))
        stamp[TRACEBACK] = tb[-TRACEBACK_LIMIT:]
    return stamp
