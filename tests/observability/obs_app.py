"""The app the observability tests run, in process and as `mailbag worker
tests.observability.obs_app:app` (queue names from `MAILBAG_TEST_RUN`).

One queue, one handler, steered by the payload: `{"fail_first": true}` fails its first
attempt, `{"block": true}` waits for the `gate` event given to `build`; anything else succeeds.
A body that is not JSON is poison and dead-letters at once."""

from __future__ import annotations

import asyncio
import logging
import os

from mailbag.broker import RetryPolicy
from mailbag.workers import App, Context

log = logging.getLogger("tests.observability")


def build(run: str, delay: float = 0.05, gate: asyncio.Event | None = None) -> App:
    application = App(f"obs{run}")

    retry = RetryPolicy(max_attempts=3, initial_delay=delay, multiplier=1.0, max_delay=delay)

    @application.handler(topic(run), queue=topic(run), retry=retry)
    async def job(payload: dict, ctx: Context) -> None:
        log.info("handling job")
        if payload.get("fail_first") and ctx.attempt == 1:
            raise RuntimeError("flaky dependency")
        if payload.get("block") and gate is not None:
            await gate.wait()

    return application


def topic(run: str) -> str:
    return f"{run}.jobs"


def app() -> App:
    return build(os.environ["MAILBAG_TEST_RUN"], float(os.environ.get("MAILBAG_TEST_DELAY", "0.2")))
