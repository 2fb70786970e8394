"""A Lambda invocation that dies in its handler, as one killed at its timeout or out of
memory does: run as `python -m tests.aws.dying_invocation EVENT_FILE SECONDS_LEFT`
with the function's `MAILBAG_*` environment. The handler takes its idempotency claim,
then the process kills itself with SIGKILL: nothing is released, nothing answered."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable

from mailbag.workers import App
from mailbag.workers.aws_lambda import handler_for
from tests.aws.events import LambdaContext

TOPIC = "orders.created"
QUEUE = "shop.orders"


def orders_app(run: Callable[[dict], None]) -> App:
    """The function's app: one handler on QUEUE, calling `run` with the payload."""
    app = App("shop")

    @app.handler(TOPIC, queue=QUEUE)
    async def on_order(payload: dict) -> None:
        run(payload)

    return app


def _die(payload: dict) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    event_file, seconds_left = sys.argv[1], float(sys.argv[2])
    with open(event_file) as fh:
        event = json.load(fh)
    handler_for(orders_app(_die), margin=0.2)(event, LambdaContext(seconds_left))
    sys.exit("the invocation was meant to die in its handler")
