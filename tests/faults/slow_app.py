"""The app the shutdown faults run as `mailbag worker tests.faults.slow_app:app`: its
handler notes that it started (a line in `$MAILBAG_TEST_STARTED`) and then runs for
`$MAILBAG_TEST_HOLD` seconds, so a stop always finds it in flight."""

from __future__ import annotations

import asyncio
import os

from mailbag.workers import App, Context


def build(run: str) -> App:
    application = App(f"slow{run}")

    @application.handler(topic(run), queue=topic(run), idempotency=False)
    async def slow(payload: dict, ctx: Context) -> None:
        with open(os.environ["MAILBAG_TEST_STARTED"], "a") as out:
            out.write(f"{ctx.message_id}\n")
        await asyncio.sleep(float(os.environ.get("MAILBAG_TEST_HOLD", "600")))

    return application


def topic(run: str) -> str:
    return f"{run}.slow"


def app() -> App:
    return build(os.environ["MAILBAG_TEST_RUN"])
