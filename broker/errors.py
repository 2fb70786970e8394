"""mailbag's error tree, and the errors every adapter raises, so callers never catch an
SDK's exception types.

Every exception mailbag raises to a user derives from `MailbagError`, in one of four
families: `BrokerError` (the broker layer), `PublishError` (publishing: a message
refused as built, or not confirmed), `StoreError` (idempotency, saga and outbox storage) and
`ConfigurationError` (a setting or URL that cannot work). The root lives here, in the
lowest layer, so every package can derive from it.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class MailbagError(Exception):
    """Base of every error mailbag raises to its users."""


class ConfigurationError(MailbagError, ValueError):
    """A setting, URL or argument that cannot work; raised at start, before any message."""


class MissingExtra(ConfigurationError, ImportError):
    """A feature needs a package that is installed only with one of mailbag's extras."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"this needs the {package!r} package: pip install 'mailbag[{extra}]'")
        self.package = package
        self.extra = extra


#: third-party top-level package -> the extra of pyproject.toml that installs it
EXTRAS = {"redis": "redis", "asyncpg": "postgres", "psycopg": "postgres", "matplotlib": "charts"}


@contextmanager
def extras_named() -> Iterator[None]:
    """Turn the `ModuleNotFoundError` of a package an extra installs into `MissingExtra`,
    which names the extra; any other import error passes unchanged."""
    try:
        yield
    except ModuleNotFoundError as exc:
        package = (exc.name or "").split(".")[0]
        if package not in EXTRAS:
            raise
        raise MissingExtra(package, EXTRAS[package]) from None


class StoreError(MailbagError):
    """A store (idempotency, saga state, outbox) could not be reached or refused a call."""


class StoreUnavailable(StoreError, ConnectionError):
    """A store's database or server could not be reached (the URL in the text is masked)."""


class BrokerError(MailbagError):
    """Base of every error the broker layer raises."""


class BrokerUrlError(BrokerError, ConfigurationError):
    """The broker URL is malformed or names an unknown scheme."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """The broker could not be reached (the message says where, password masked)."""


class BrokerClosed(BrokerError):
    """The broker was closed; nothing more can be published or consumed through it."""


class TopologyError(BrokerError):
    """A topology is invalid, or conflicts with what the broker already has."""


class UnknownQueue(BrokerError, KeyError):
    """The queue was never declared."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown queue"


class UnknownTopic(BrokerError, KeyError):
    """The topic was never declared."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown topic"


class PublishFailed(BrokerError):
    """The broker refused or did not confirm some messages; `message_ids` names them.
    Of those, `unknown` names the ones whose outcome is unknown (sent, never confirmed:
    they may have been delivered, so republish them only under the same id); the rest
    the broker refused (safe to republish). The others of the call were confirmed."""

    #: ids named in the error's text; the rest are counted (all are in `message_ids`)
    SHOWN = 5

    def __init__(self, message: str, message_ids: list[str], unknown: Sequence[str] = ()) -> None:
        shown = ", ".join(message_ids[: self.SHOWN])
        more = len(message_ids) - self.SHOWN
        super().__init__(f"{message}: {shown}" + (f" and {more} more" if more > 0 else ""))
        self.message_ids = list(message_ids)
        self.unknown = [i for i in message_ids if i in set(unknown)]


class Unroutable(BrokerError):
    """A publish asked for with `mandatory=True` reached no queue (no queue is subscribed
    to the topic, or no subscription's filter matches). Permanent: retrying cannot help,
    and it says nothing about the broker's health, so no circuit breaker counts it. The
    routable messages of the same call were published; `message_ids` names the others."""

    def __init__(self, topic: str, message_ids: list[str]) -> None:
        shown = ", ".join(message_ids[: PublishFailed.SHOWN])
        more = len(message_ids) - PublishFailed.SHOWN
        super().__init__(
            f"no queue takes {len(message_ids)} message(s) published to topic {topic!r} "
            f"(none is subscribed, or no subscription's filter matches): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
        self.topic = topic
        self.message_ids = list(message_ids)


class MessageTooLarge(BrokerError, ValueError):
    """A message exceeds the broker's size limit; raised before any call is made."""


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


class PayloadRejected(PublishError, ValueError):
    """The payload does not validate against the model registered for its topic; it
    was refused before anything was sent."""


class ReservedHeader(PublishError, ValueError):
    """A header in the `x-mailbag-` namespace, which mailbag alone writes (attempts,
    dead-letter reasons): refused before anything was sent."""


class AlreadySettled(BrokerError):
    """A delivery was settled twice."""


class DeliveryReleased(BrokerError):
    """The delivery's consumer closed and the message went back to the queue; settling
    it now would act on a message another consumer may hold."""
