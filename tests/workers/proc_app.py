"""The app the cross-process tests run with `mailbag worker tests.workers.proc_app:app`.

Queue names come from `MAILBAG_TEST_RUN`; side effects go to the `ledger` table of the
SQLite file `MAILBAG_TEST_DB` (the idempotency store's file too, for `book`)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

from mailbag.broker import RetryPolicy
from mailbag.workers import App, Context

RETRY = RetryPolicy(max_attempts=10, initial_delay=0.05, max_delay=0.2)


def build(run: str) -> App:
    application = App(f"proc{run}")
    work = float(os.environ.get("MAILBAG_TEST_WORK", "0.01"))

    @application.handler(f"{run}.book", queue=f"{run}.book", transactional=True, retry=RETRY)
    async def book(payload: dict, ctx: Context) -> None:
        """Writes in the idempotency transaction: exactly once across crashes."""
        await ctx.transaction.execute("INSERT INTO ledger VALUES (?, ?)", (payload["n"], os.getpid()))
        await asyncio.sleep(work)

    @application.handler(f"{run}.tally", queue=f"{run}.tally", idempotency=False, retry=RETRY)
    def tally(payload: dict) -> None:
        """No idempotency: every run shows in the ledger, so a double run is visible."""
        time.sleep(work)
        record(payload["n"])

    @application.handler(f"{run}.charge", queue=f"{run}.charge", retry=RETRY)
    def charge(payload: dict) -> None:
        """Idempotent by message id, side effect outside the store."""
        time.sleep(work)
        record(payload["n"])

    return application


def record(n: int) -> None:
    with sqlite3.connect(os.environ["MAILBAG_TEST_DB"], timeout=30) as db:
        db.execute("INSERT INTO ledger VALUES (?, ?)", (n, os.getpid()))


def app() -> App:
    return build(os.environ["MAILBAG_TEST_RUN"])
