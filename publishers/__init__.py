"""Publishing: the typed publish API, batching, confirm handling, retries and circuit
breaking on transient broker faults, and the transactional outbox with its relay.

It publishes through the `broker` contract only; it never consumes.
"""

from mailbag.broker.breaker import BreakerPolicy, CircuitBreaker
from mailbag.broker.outgoing import TopicModels
from mailbag.publishers.errors import CircuitOpen, PayloadRejected, PublishError, ReservedHeader
from mailbag.publishers.publisher import Publisher, PublisherSettings

__all__ = [
    "BreakerPolicy",
    "CircuitBreaker",
    "CircuitOpen",
    "PayloadRejected",
    "PublishError",
    "Publisher",
    "PublisherSettings",
    "ReservedHeader",
    "TopicModels",
]
