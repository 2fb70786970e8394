"""The errors a publisher raises, so callers learn which messages did not get out."""

from __future__ import annotations

from collections.abc import Sequence

from mailbag.broker.errors import MailbagError


class PublishError(MailbagError):
    """Some messages were not confirmed by the broker. Each message of the call has one
    of three outcomes: `sent` (confirmed: safe to forget), `failed` (not published: the
    broker refused it or it was never sent; safe to republish) or `unknown` (sent and
    never confirmed: it may have been delivered, so republish it only under the same id,
    which idempotent consumers drop as a duplicate). The cause is chained."""

    def __init__(
        self, reason: str, failed: Sequence[str], sent: Sequence[str] = (), unknown: Sequence[str] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = list(failed)
        self.sent = list(sent)
        self.unknown = list(unknown)

    @property
    def unconfirmed(self) -> list[str]:
        """`failed` and `unknown`: what to publish again (under the same ids)."""
        return [*self.failed, *self.unknown]

    def __str__(self) -> str:
        text = f"{self.reason}; not published: {_shown(self.failed)}"
        if self.unknown:
            text += (
                f"; outcome unknown (may have been delivered; republish under the same id only): {_shown(self.unknown)}"
            )
        return text


def _shown(ids: Sequence[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "") or "none"


class CircuitOpen(PublishError):
    """The broker failed repeatedly and the circuit is open: the call failed at once,
    sending nothing (messages an earlier try of the same call sent unconfirmed are
    `unknown`). `retry_after` says when the next trial publish is allowed (seconds)."""

    def __init__(self, reason: str, failed: Sequence[str], retry_after: float, unknown: Sequence[str] = ()) -> None:
        super().__init__(reason, failed, unknown=unknown)
        self.retry_after = retry_after


class PayloadRejected(PublishError, ValueError):
    """The payload does not validate against the model registered for its topic; it
    was refused before anything was sent."""


class ReservedHeader(PublishError, ValueError):
    """A header in the `x-mailbag-` namespace, which mailbag alone writes (attempts,
    dead-letter reasons): refused before anything was sent."""
