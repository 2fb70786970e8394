"""The errors a publisher raises, so callers learn which messages did not get out.
`PublishError` and the refusals of a message as built live in `mailbag.broker.errors`,
beside the one function that builds every outgoing message."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker.errors import PayloadRejected, PublishError, ReservedHeader

__all__ = ["CircuitOpen", "PayloadRejected", "PublishError", "ReservedHeader"]


class CircuitOpen(PublishError):
    """The broker failed repeatedly and the circuit is open: the call failed at once,
    sending nothing (messages an earlier try of the same call sent unconfirmed are
    `unknown`). `retry_after` says when the next trial publish is allowed (seconds)."""

    def __init__(self, reason: str, failed: Sequence[str], retry_after: float, unknown: Sequence[str] = ()) -> None:
        super().__init__(reason, failed, unknown=unknown)
        self.retry_after = retry_after
