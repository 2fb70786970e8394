"""Dead letters: the dead-letter record (reason, error, attempts, origin) and the
list / show / replay / purge / export operations, on every broker.

It works through the `broker` contract only, never through a broker SDK.

    dead = DeadLetters(broker, "inventory.reserve")
    for record in await dead.ls():
        print(record.id, record.reason, record.attempts)
    await dead.replay(where='error_type == "TimeoutError"', rate=50)
"""

from mailbag.dlq.operations import DeadLetters, ExportFileError, NotInQueue, dump, load, replay_file
from mailbag.dlq.record import FIELD_NAMES, DeadLetter
from mailbag.dlq.sweep import SweepResult
from mailbag.dlq.where import Where, WhereError

__all__ = [
    "FIELD_NAMES",
    "DeadLetter",
    "DeadLetters",
    "ExportFileError",
    "NotInQueue",
    "SweepResult",
    "Where",
    "WhereError",
    "dump",
    "load",
    "replay_file",
]
