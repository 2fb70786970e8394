"""How long a message that could not be dead-lettered stays away before it comes back.

A dead-letter queue that is gone (deleted, not yet restored) or a dead-letter publish
the broker refuses must neither strand the message nor run it in a hot loop: the
message goes back to its queue, visible again only after a pause that doubles with
each failure in a row (`FIRST_PAUSE`, 2x, ... up to `MAX_PAUSE`), and each return logs
one line. Its handler thus runs at most 1 + log2(window / FIRST_PAUSE + 1) times in a
window while the pauses grow (5 in the first 15 s: at 0, 1, 3, 7 and 15 s), then once
per `MAX_PAUSE`.

The streaks are kept per queue and message id, in memory, once per process
(`RETURNS`): a worker whose dead-lettering failed and a consumer that dead-letters an
exhausted message unrun continue the same streak. A message that moves to another
process starts again at `FIRST_PAUSE`.
"""

from __future__ import annotations

#: the first pause, in seconds
FIRST_PAUSE = 1.0
#: the longest pause: a restored dead-letter queue takes the message within this time
MAX_PAUSE = 60.0
#: streaks remembered (the oldest are forgotten first)
KEPT = 10_000


class DeadLetterBackoff:
    """Failures in a row to dead-letter each message of each queue, and the pause they call for."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], int] = {}

    def failed(self, queue: str, message_id: str) -> float:
        """Note one more failure to dead-letter the message; the seconds it stays away."""
        key = (queue, message_id)
        failures = self._failures.pop(key, 0) + 1
        self._failures[key] = failures
        while len(self._failures) > KEPT:
            del self._failures[next(iter(self._failures))]
        return min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(failures - 1, 32))

    def settled(self, queue: str, message_id: str) -> None:
        """A settlement the broker took (dead-lettered at last, handled): the streak ends."""
        self._failures.pop((queue, message_id), None)


#: this process's streaks
RETURNS = DeadLetterBackoff()
