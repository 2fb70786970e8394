"""What every adapter does with published messages no queue takes, so the semantics are
the same on every broker.

By default such a publish succeeds (as SNS and a plain AMQP publish do): the messages
are counted per topic (`Unrouted.counts`, exported by the worker's metrics) and one
WARNING per topic is logged at most once a minute. With `mandatory=True` the call raises
`Unroutable` naming the topic and those messages instead.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from mailbag.broker.errors import Unroutable

log = logging.getLogger("mailbag.broker")

#: seconds between two warnings about the same topic
WARN_EVERY = 60.0


class Unrouted:
    """Publishes no queue took on one broker: counted per topic, warned about sparingly."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: topic -> messages published to it that no queue took (in default mode)
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self._warned_at: dict[str, float] = {}

    def note(self, topic: str, message_ids: Sequence[str], *, mandatory: bool) -> None:
        """Record messages of `topic` that no queue took; raises `Unroutable` when mandatory."""
        if not message_ids:
            return
        if mandatory:
            raise Unroutable(topic, list(message_ids))
        self.counts[topic] += len(message_ids)
        now = self._clock()
        last = self._warned_at.get(topic)
        if last is None or now - last >= WARN_EVERY:
            self._warned_at[topic] = now
            log.warning(
                "no queue takes messages published to topic %r (none is subscribed, or no filter matches); "
                "%d dropped so far; publish with mandatory=True to make this an error",
                topic,
                self.counts[topic],
            )
