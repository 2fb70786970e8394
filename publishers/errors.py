"""The errors a publisher raises, so callers learn which messages did not get out."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker.errors import MailbagError


class PublishError(MailbagError):
    """Some messages were not confirmed by the broker. `failed` names them; `sent` names
    those of the same call that were confirmed (safe to forget); the cause is chained."""

    def __init__(self, reason: str, failed: Sequence[str], sent: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = list(failed)
        self.sent = list(sent)

    def __str__(self) -> str:
        shown = ", ".join(self.failed[:5]) + (f" and {len(self.failed) - 5} more" if len(self.failed) > 5 else "")
        return f"{self.reason}; not published: {shown or 'none'}"


class CircuitOpen(PublishError):
    """The broker failed repeatedly and the circuit is open: nothing was sent, the call
    failed at once. `retry_after` says when the next trial publish is allowed (seconds)."""

    def __init__(self, reason: str, failed: Sequence[str], retry_after: float) -> None:
        super().__init__(reason, failed)
        self.retry_after = retry_after


class PayloadRejected(PublishError, ValueError):
    """The payload does not validate against the model registered for its topic; it
    was refused before anything was sent."""


class ReservedHeader(PublishError, ValueError):
    """A header in the `x-mailbag-` namespace, which mailbag alone writes (attempts,
    dead-letter reasons): refused before anything was sent."""
