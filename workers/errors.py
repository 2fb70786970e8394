"""Exceptions a handler (or a middleware) raises to choose its message's fate
explicitly, and the one a worker raises when it can no longer do its work."""

from mailbag.broker.errors import MailbagError


class Reject(Exception):
    """Dead-letter this message now, with this reason; retrying cannot help. Raised
    `from` an error, that error's type, text and traceback go into the dead letter."""


class RetryLater(Exception):
    """Put the message back for `delay` seconds; this try counts as an attempt."""

    def __init__(self, delay: float, reason: str = "retry later") -> None:
        super().__init__(reason)
        self.delay = delay


class Postpone(Exception):
    """Put the message back for `delay` seconds without using up an attempt: the
    message was never tried (a circuit is open, a duplicate is still running)."""

    def __init__(self, delay: float, reason: str = "postponed") -> None:
        super().__init__(reason)
        self.delay = delay


class ConsumerFailed(MailbagError):
    """A queue's consumer ended on its own (the broker gave up on it); the worker
    stopped rather than go on without that queue."""
