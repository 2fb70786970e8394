"""Exceptions a handler raises to choose its message's fate explicitly."""


class Reject(Exception):
    """Dead-letter this message now, with this reason; retrying cannot help."""


class RetryLater(Exception):
    """Put the message back for `delay` seconds (a dependency is down, not the message)."""

    def __init__(self, delay: float, reason: str = "retry later") -> None:
        super().__init__(reason)
        self.delay = delay
