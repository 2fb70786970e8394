"""Publishing: the typed publish API, batching, confirm handling, retries and circuit
breaking on transient broker faults, and the transactional outbox with its relay.

It publishes through the `broker` contract only; it never consumes.
"""

from publishers.breaker import BreakerSettings, CircuitBreaker
from publishers.envelope import TopicModels
from publishers.errors import CircuitOpen, PayloadRejected, PublishError
from publishers.publisher import Publisher, PublisherSettings

__all__ = [
    "BreakerSettings",
    "CircuitBreaker",
    "CircuitOpen",
    "PayloadRejected",
    "PublishError",
    "Publisher",
    "PublisherSettings",
    "TopicModels",
]
