"""The app the lease faults run as `mailbag worker tests.faults.lease_app:app`: a
non-transactional handler, idempotent by message id, that writes a ledger row when it
starts and then works for `$MAILBAG_TEST_HOLD` seconds."""

from __future__ import annotations

import asyncio
import os
import sqlite3

from mailbag.workers import App, Context


def build(run: str, ledger: str, hold: float) -> App:
    application = App(f"lease{run}")

    @application.handler(topic(run), queue=topic(run))
    async def work(payload: dict, ctx: Context) -> None:
        with sqlite3.connect(ledger, timeout=30) as db:
            db.execute("INSERT INTO runs VALUES (?, ?)", (payload["n"], os.getpid()))
        await asyncio.sleep(hold)

    return application


def create_ledger(ledger: str) -> None:
    with sqlite3.connect(ledger) as db:
        db.execute("CREATE TABLE runs (n INTEGER NOT NULL, pid INTEGER NOT NULL)")


def runs(ledger: str) -> list[tuple[int, int]]:
    with sqlite3.connect(ledger, timeout=30) as db:
        return db.execute("SELECT n, pid FROM runs").fetchall()


def topic(run: str) -> str:
    return f"{run}.work"


def app() -> App:
    return build(os.environ["MAILBAG_TEST_RUN"], os.environ["MAILBAG_TEST_DB"], float(os.environ["MAILBAG_TEST_HOLD"]))
