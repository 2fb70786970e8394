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

#: seconds between two warnings about the same thing
WARN_EVERY = 60.0


class Sparingly:
    """Whether a warning about `key` is due: at most once per `WARN_EVERY` seconds, so a
    steady fault is seen in the log without flooding it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._warned_at: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = self._clock()
        last = self._warned_at.get(key)
        if last is not None and now - last < WARN_EVERY:
            return False
        self._warned_at[key] = now
        return True


class Unrouted:
    """Publishes no queue took on one broker: counted per topic, warned about sparingly."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        #: topic -> messages published to it that no queue took (in default mode)
        self.counts: Counter[str] = Counter()
        self._warnings = Sparingly(clock)

    def note(self, topic: str, message_ids: Sequence[str], *, mandatory: bool) -> None:
        """Record messages of `topic` that no queue took; raises `Unroutable` when mandatory."""
        if not message_ids:
            return
        if mandatory:
            raise Unroutable(topic, list(message_ids))
        self.counts[topic] += len(message_ids)
        if self._warnings.due(topic):
            log.warning(
                "no queue takes messages published to topic %r (none is subscribed, or no filter matches); "
                "%d dropped so far; publish with mandatory=True to make this an error",
                topic,
                self.counts[topic],
            )
