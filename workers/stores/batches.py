"""Group commit for stores: the writes that concurrent handlers ask for while a batch
is being written queue up and go in the next batch, one round trip (and, for a
database, one transaction and one disk flush) for all of them. No timer: a lone write
goes at once, and batches grow by themselves as the load does. Each caller gets its
own answer, or the batch's error, once the batch is written, never before. Whatever
the write raises, a caller's wait ends with an answer or `StoreUnavailable`, never a
cancellation: a cancelled wait would end the task that waits (a worker's runner)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from mailbag.broker.errors import StoreUnavailable

log = logging.getLogger("mailbag.worker")


@dataclass
class Op:
    """One caller's write (`kind`, `args`), waiting for its batch."""

    kind: str
    args: tuple[Any, ...]
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Batches:
    """`submit` queues an operation and returns its answer once `write(batch)` (which
    returns one answer per operation, in order) has written the batch it went in. An
    error reaches every caller of that batch as `StoreUnavailable` (logged with its
    traceback when it is not one of `errors`, the driver's own, which are expected);
    the next batch is tried afresh."""

    def __init__(
        self, write: Callable[[list[Op]], Awaitable[list[Any]]], errors: tuple[type[BaseException], ...], what: str
    ) -> None:
        self.write = write
        self.errors = errors
        self.what = what
        self._queue: list[Op] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, kind: str, *args: Any) -> Any:
        op = Op(kind, args)
        self._queue.append(op)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        return await op.done

    async def close(self) -> None:
        """Wait for the batch being written, if any."""
        if self._writer is not None:
            with suppress(Exception):
                await self._writer

    async def _write_all(self) -> None:
        while self._queue:
            # one turn of the loop first: handlers that are ready to run (deliveries
            # already received) add their writes to this batch rather than the next
            await asyncio.sleep(0)
            batch = [op for op in self._queue if not op.done.cancelled()]
            self._queue = []
            try:
                answers = await self.write(batch)
            except BaseException as exc:
                if not isinstance(exc, self.errors):
                    log.error("%s failed a batch unexpectedly", self.what, exc_info=exc)
                _fail(batch, StoreUnavailable(f"{self.what} could not write a batch: {type(exc).__name__}: {exc}"))
                if _ends_writer(exc):
                    _fail(self._queue, StoreUnavailable(f"{self.what} stopped writing"))
                    raise
                continue
            for op, answer in zip(batch, answers):
                if not op.done.done():
                    op.done.set_result(answer)


def _ends_writer(exc: BaseException) -> bool:
    """The writer task itself was cancelled, or the process is exiting."""
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
    return not isinstance(exc, Exception)


def _fail(ops: list[Op], error: StoreUnavailable) -> None:
    for op in ops:
        if not op.done.done():
            op.done.set_exception(error)
