"""Ctrl-C in any command: exit status 130 within `GRACE` seconds, no traceback, and no
lines from libraries whose tasks the interrupt left behind.

The first SIGINT cancels the command's coroutine, so it can say what it had done
(`publish` prints the ids the broker confirmed) and close what it opened; whatever is
still running `GRACE` seconds later (a connection that does not close, a blocking
import, a thread) is abandoned: the process ends there, status 130. A second SIGINT
ends it at once. A command that handles signals itself (`worker`, `outbox relay`)
replaces this while it runs."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any

from mailbag.cli import INTERRUPTED
from mailbag.cli.common import LIBRARIES

#: seconds a cancelled command gets to finish before the process ends regardless
GRACE = 1.0
#: seconds the output gets to drain when the process ends that way
FLUSH_WAIT = 0.3


def run_cancellable(command: Coroutine[Any, Any, Any]) -> Any:
    """Run `command` on a new event loop; raises `KeyboardInterrupt` once Ctrl-C
    cancelled it."""
    interrupt = _Interrupt()
    previous = signal.signal(signal.SIGINT, interrupt.on_signal)
    try:
        with asyncio.Runner() as runner:
            try:
                return runner.run(interrupt.watch(command))
            except asyncio.CancelledError:
                if interrupt.signalled:
                    raise KeyboardInterrupt from None
                raise
    finally:
        if signal.getsignal(signal.SIGINT) == interrupt.on_signal:
            signal.signal(signal.SIGINT, previous)


class _Interrupt:
    def __init__(self) -> None:
        self.signalled = False
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def watch(self, command: Coroutine[Any, Any, Any]) -> Any:
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        return await command

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Runs between two bytecodes of the main thread, whatever it is doing: it asks
        the loop to cancel the command, and arms the deadline."""
        if self.signalled:
            exit_now()
        self.signalled = True
        quiet_leftovers()
        threading.Thread(target=_exit_after, args=(GRACE,), daemon=True, name="interrupt-deadline").start()
        if self._task is None or self._loop is None:
            raise KeyboardInterrupt
        self._loop.call_soon_threadsafe(self._task.cancel)


def quiet_leftovers() -> None:
    """Silence what an interrupted program's abandoned tasks would log as they are
    collected ("Task exception was never retrieved" and the like)."""
    for name in ("asyncio", *LIBRARIES):
        logging.getLogger(name).disabled = True


def _exit_after(seconds: float) -> None:
    threading.Event().wait(seconds)
    exit_now()


def exit_now() -> None:
    """End the process with status 130 at once, after flushing what was printed (for a
    moment at most: a reader that stopped reading must not keep the process alive)."""
    flushing = threading.Thread(target=_flush, daemon=True, name="interrupt-flush")
    flushing.start()
    flushing.join(FLUSH_WAIT)
    os._exit(INTERRUPTED)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
