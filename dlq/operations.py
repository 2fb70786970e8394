"""The dead-letter verbs for ops scripts and tests: ls, show, replay, purge, export,
and replay from an exported file. The `mailbag dlq` command line is a thin shell
around them.

Listing, showing and exporting browse: the messages stay in the DLQ. Replay and
purge remove only through a `Sweep`, which never loses a message (see `mailbag.dlq.sweep`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from mailbag.broker import Broker, Message
from mailbag.broker.errors import MailbagError
from mailbag.broker.files import write_file
from mailbag.dlq.pace import Pace
from mailbag.dlq.record import DeadLetter
from mailbag.dlq.sweep import Act, Progress, Sweep, SweepResult
from mailbag.dlq.where import Where

DLQ_SUFFIX = ".dlq"


class NotInQueue(MailbagError, LookupError):
    """A message id that is not (or no longer) ready in the dead-letter queue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "message not found"


class ExportFileError(MailbagError, ValueError):
    """An export file that cannot be read back; the message names the line."""


class DeadLetters:
    """The dead letters of `queue`, kept in its dead-letter queue: `<queue>.dlq` unless
    `dead_letter_queue` names another. A `queue` ending in `.dlq` is taken as the
    dead-letter queue itself (so names copied from `mailbag queues` work as they are)."""

    def __init__(self, broker: Broker, queue: str, *, dead_letter_queue: str | None = None) -> None:
        if dead_letter_queue is None and queue.endswith(DLQ_SUFFIX):
            queue, dead_letter_queue = queue[: -len(DLQ_SUFFIX)], queue
        self.broker = broker
        self.queue = queue
        self.dead_letter_queue = dead_letter_queue or f"{queue}{DLQ_SUFFIX}"

    async def ls(self, limit: int | None = 100) -> list[DeadLetter]:
        """Up to `limit` dead letters (all with None), oldest first, without consuming."""
        if limit is None:
            limit = (await self.broker.stats(self.dead_letter_queue)).ready
        if limit < 1:
            return []
        messages = await self.broker.browse(self.dead_letter_queue, limit=limit)
        return [self._record(m) for m in messages]

    async def show(self, message_id: str) -> DeadLetter:
        """The dead letter with this id; raises `NotInQueue` if it is not ready there."""
        for record in await self.ls(limit=None):
            if record.id == message_id:
                return record
        raise NotInQueue(f"no message {message_id!r} is ready in {self.dead_letter_queue!r}")

    async def replay(
        self,
        *,
        ids: Collection[str] = (),
        all: bool = False,
        where: str | Where | None = None,
        to: str | None = None,
        rate: float | None = None,
        batch: int = 10,
        on_progress: Progress | None = None,
    ) -> SweepResult:
        """Send the chosen dead letters back, then remove them from the DLQ.

        Each goes to `to`, else to the queue it died in: the original message with its
        id, body, properties and headers, without the death headers, so attempts start
        again at 1 and idempotent handlers drop what they already handled. A batch is
        sent and confirmed before any of it is acked, so stopping at any point loses
        nothing and at worst leaves one batch in both places."""
        choose = _selection(ids, all, where)
        await self.broker.stats(to or self.queue)  # an unknown target fails here, before anything moves

        async def send(records: list[DeadLetter]) -> None:
            await send_originals(self.broker, records, to)

        return await self._sweep(choose, send, ids, rate, batch, on_progress)

    async def purge(
        self,
        *,
        ids: Collection[str] = (),
        all: bool = False,
        where: str | Where | None = None,
        on_progress: Progress | None = None,
    ) -> SweepResult:
        """Drop the chosen dead letters for good. `all=True` alone is the broker's own
        purge: every ready message, including any that arrived since you last looked;
        with `ids` or `where`, exactly the messages examined and chosen."""
        if all and not ids and where is None:
            return SweepResult(removed=await self.broker.purge(self.dead_letter_queue))
        choose = _selection(ids, all, where)

        async def drop(records: list[DeadLetter]) -> None:
            """Acking is the removal; nothing to do first."""

        return await self._sweep(choose, drop, ids, None, 100, on_progress)

    async def export(self, out: str | Path | TextIO, *, follow_symlinks: bool = False) -> int:
        """Write every ready dead letter as one JSON line (see `dump`) without consuming
        any; a file is written whole or not at all, and only a regular file (a symbolic
        link only with `follow_symlinks`; see `mailbag.broker.files`). Returns how many."""
        records = await self.ls(limit=None)
        if not isinstance(out, (str, Path)):
            dump(records, out)
            return len(records)
        text = io.StringIO()
        dump(records, text)
        write_file(out, text.getvalue(), follow_symlinks=follow_symlinks)
        return len(records)

    def _record(self, message: Message) -> DeadLetter:
        return DeadLetter.from_message(message, self.dead_letter_queue, self.queue)

    async def _sweep(
        self,
        choose: Callable[[DeadLetter], bool],
        act: Act,
        ids: Collection[str],
        rate: float | None,
        batch: int,
        on_progress: Progress | None,
    ) -> SweepResult:
        sweep = Sweep(
            self.broker, self.dead_letter_queue, self.queue, choose, act, ids=tuple(ids), batch=batch, rate=rate
        )
        return await sweep.run(on_progress)


async def replay_file(
    broker: Broker,
    path: str | Path,
    *,
    to: str | None = None,
    rate: float | None = None,
    batch: int = 10,
    on_progress: Progress | None = None,
) -> list[str]:
    """Send every message of an export back, each to `to` or the queue it died in,
    exactly as exported (same id, body, properties, headers). The whole file is read
    and checked before the first send. Returns the ids sent, in file order."""
    records = load(path)
    for target in {target_of(r, to) for r in records}:
        await broker.stats(target)  # an unknown queue fails here, before anything is sent
    pace = Pace(rate, batch)
    sent: list[str] = []
    for start in range(0, len(records), pace.batch):
        chunk = records[start : start + pace.batch]
        for _ in chunk:
            await pace.wait()
        await send_originals(broker, chunk, to)
        sent.extend(r.id for r in chunk)
        if on_progress is not None:
            on_progress(len(sent), len(records))
    return sent


async def send_originals(broker: Broker, records: Iterable[DeadLetter], to: str | None) -> None:
    """Send each record's original message to `to`, else to its source queue, one
    confirmed `send` per target queue."""
    by_queue: dict[str, list[Message]] = {}
    for record in records:
        by_queue.setdefault(target_of(record, to), []).append(record.message)
    for queue, messages in by_queue.items():
        await broker.send(queue, messages)


def target_of(record: DeadLetter, to: str | None) -> str:
    """Where a replay sends `record`: `to`, else the queue it died in."""
    target = to or record.source_queue
    if target is None:
        raise ValueError(f"message {record.id} does not say which queue it came from; name a target queue")
    return target


def dump(records: Iterable[DeadLetter], out: TextIO) -> None:
    """The export format: one `DeadLetter` per line as JSON, the body as URL-safe
    base64 so any bytes come back identical."""
    for record in records:
        out.write(record.model_dump_json() + "\n")


def load(path: str | Path) -> list[DeadLetter]:
    """Read an export back; raises `ExportFileError` naming the first bad line."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(DeadLetter.model_validate_json(line))
            except ValidationError as exc:
                raise ExportFileError(f"{path}:{number}: not a dead-letter record ({_first_error(exc)})") from None
    return records


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error.get("loc", ())) or "line"
    return f"{where}: {error.get('msg')}"


def _selection(ids: Collection[str], all: bool, where: str | Where | None) -> Callable[[DeadLetter], bool]:
    """The `choose` function for a sweep: ids narrow the candidates, `where` filters
    them; `all` must be said explicitly when neither is given."""
    if ids and all:
        raise ValueError("choose messages by ids or all of them, not both")
    if not ids and not all and where is None:
        raise ValueError("say which messages: ids, all, or a where expression")
    if where is None:
        return lambda record: True
    return where if isinstance(where, Where) else Where(where)
