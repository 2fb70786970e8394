"""Header names the broker layer stamps on messages, kept in one place.

Dead-letter headers travel with the message into the dead-letter queue so anyone
reading it (our `dlq` tools or a plain client) can see why it is there.
"""

import socket
import traceback
from datetime import UTC, datetime
from typing import Literal

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

#: what AMQP has no basic property for travels in these (see `rabbitmq.marshal`):
#: the topic a message was published on (the delivery's exchange is lost on retry and send)
TOPIC = "x-mailbag-topic"
#: the attempt number of the copy a retry republishes (the broker's counters restart with it)
ATTEMPT = "x-mailbag-attempt"
CAUSATION_ID = "x-mailbag-causation-id"
ORDERING_KEY = "x-mailbag-ordering-key"
#: float headers at full precision, as JSON {name: value}: AMQP clients (pamqp among
#: them) write a float as 32 bits, so each float header also travels under its own
#: name as text, readable by any client, and this carries the double mailbag reads back
FLOATS = "x-mailbag-floats"

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

#: most bytes of text (reason, error message and traceback together) a dead letter
#: carries on any broker; an adapter passes less where its wire takes less
#: (`dead_letter_stamp`'s `room`). Well under RabbitMQ's default frame (131,072 bytes),
#: which must hold every header of a message.
DEAD_LETTER_TEXT_MAX = 65_536
#: the least room a dead letter's text is given, whatever its message leaves: the head of
#: its reason always travels
DEAD_LETTER_TEXT_MIN = 512
#: bytes of the exception line a traceback keeps (the error's text travels on its own)
EXCEPTION_LINE_MAX = 1024


def dead_letter_stamp(
    message_topic: str,
    queue: str,
    attempts: int,
    reason: str,
    error: BaseException | None,
    room: int = DEAD_LETTER_TEXT_MAX,
) -> dict[str, str | int]:
    """The headers to add to a message as it enters the dead-letter queue. Its reason,
    the error's text and the traceback share `room` UTF-8 bytes (at most
    `DEAD_LETTER_TEXT_MAX`, at least `DEAD_LETTER_TEXT_MIN`): each adapter passes what its
    wire has left beside the message. The reason and the error's text keep their head,
    the traceback its last frames and the head of its exception line; whatever is cut is
    marked, so the handler's own error survives any size."""
    stamp: dict[str, str | int] = {
        ATTEMPTS: attempts,
        ORIGIN_QUEUE: queue,
        ORIGIN_TOPIC: message_topic,
        FAILED_AT: datetime.now(UTC).isoformat(),
        WORKER_HOST: socket.gethostname(),
    }
    texts = {DEAD_REASON: _utf8(reason)}
    sizes = {DEAD_REASON: len(texts[DEAD_REASON].encode())}
    frames = line = ""
    if error is not None:
        stamp[ERROR_TYPE] = type(error).__qualname__
        texts[ERROR_MESSAGE] = _utf8(str(error))
        sizes[ERROR_MESSAGE] = len(texts[ERROR_MESSAGE].encode())
        frames, line = _traceback(error)
        sizes[TRACEBACK] = len(frames.encode()) + min(len(line.encode()), EXCEPTION_LINE_MAX)
    room = max(DEAD_LETTER_TEXT_MIN, min(room, DEAD_LETTER_TEXT_MAX))
    for name, share in _shares(sizes, room).items():
        if name != TRACEBACK:
            stamp[name] = cut(texts[name], share)
            continue
        # the last frames (the handler's, where it raised), then the head of the exception line
        line_room = min(EXCEPTION_LINE_MAX, max(share // 2, share - len(frames.encode())))
        kept_line = cut(line, line_room)
        stamp[name] = cut(frames, share - len(kept_line.encode()), keep="tail") + kept_line
    return stamp


def cut(text: str, room: int, *, keep: Literal["head", "tail"] = "head") -> str:
    """`text` within `room` UTF-8 bytes, keeping its head (or its tail with
    `keep="tail"`), never splitting a character; what is cut is replaced by a marker
    saying how many bytes went. The one way mailbag shortens text for a wire or a log."""
    data = text.encode("utf-8", "replace")
    if len(data) <= room:
        return text
    keep_bytes = room - len(_marker(len(data)).encode())
    if keep_bytes <= 0:  # no room for a marker: as much as fits
        return data[: max(0, room)].decode("utf-8", "ignore") if keep == "head" else ""
    if keep == "tail":
        kept = data[len(data) - keep_bytes :].decode("utf-8", "ignore")
        return _marker(len(data) - len(kept.encode())) + kept
    kept = data[:keep_bytes].decode("utf-8", "ignore")
    return kept + _marker(len(data) - len(kept.encode()))


def _marker(cut_bytes: int) -> str:
    return f" [... {cut_bytes} bytes cut ...] "


def _utf8(text: str) -> str:
    """`text` as UTF-8 can carry it: a lone surrogate (from a file name, say) becomes U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text


def _shares(sizes: dict[str, int], room: int) -> dict[str, int]:
    """Split `room` bytes fairly: a text that needs less than an equal share leaves the
    rest to the others."""
    shares: dict[str, int] = {}
    left = room
    for i, (name, size) in enumerate(sorted(sizes.items(), key=lambda kv: kv[1])):
        shares[name] = min(size, left // (len(sizes) - i))
        left -= shares[name]
    return shares


def _traceback(error: BaseException) -> tuple[str, str]:
    """The formatted traceback as its frames and its exception line (which repeats the
    error's text, so a traceback keeps only `EXCEPTION_LINE_MAX` bytes of it)."""
    text = _utf8("".join(traceback.format_exception(error)))
    line = _utf8("".join(traceback.format_exception_only(error)))
    if not text.endswith(line):
        return text, ""
    return text[: len(text) - len(line)], line


#: the headers the broker layer writes and reads back (attempts, envelope, dead-letter
#: record): no outgoing message may carry them, not even one mailbag itself builds
BROKER_OWNED = frozenset((TOPIC, ATTEMPT, CAUSATION_ID, ORDERING_KEY, FLOATS, ATTEMPTS_USED, *DEAD_LETTER_HEADERS))
