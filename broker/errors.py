"""Errors every adapter raises, so callers never catch an SDK's exception types."""


class BrokerError(Exception):
    """Base of every error the broker layer raises."""


class BrokerUrlError(BrokerError, ValueError):
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
    """The broker refused or did not confirm some messages; `message_ids` names them."""

    #: ids named in the error's text; the rest are counted (all are in `message_ids`)
    SHOWN = 5

    def __init__(self, message: str, message_ids: list[str]) -> None:
        shown = ", ".join(message_ids[: self.SHOWN])
        more = len(message_ids) - self.SHOWN
        super().__init__(f"{message}: {shown}" + (f" and {more} more" if more > 0 else ""))
        self.message_ids = list(message_ids)


class MessageTooLarge(BrokerError, ValueError):
    """A message exceeds the broker's size limit; raised before any call is made."""


class AlreadySettled(BrokerError):
    """A delivery was settled twice."""


class DeliveryReleased(BrokerError):
    """The delivery's consumer closed and the message went back to the queue; settling
    it now would act on a message another consumer may hold."""
