"""An invocation that dies (killed at its timeout, out of memory) leaves its records'
idempotency claims behind: their lease ends with the invocation, so the next delivery
runs the handler. Over moto_server, since the dying invocation is another process."""

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from mailbag.broker import Message
from mailbag.broker.sqs import open_broker
from mailbag.testing import LambdaContext, sqs_event
from mailbag.workers import WorkerSettings
from mailbag.workers.aws_lambda import handler_for
from tests.aws.dying_invocation import QUEUE, TOPIC, orders_app
from tests.aws.events import queue_url
from tests.moto_server import REGION, delete_prefixed, dummy_aws_credentials, moto_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
#: the function's timeout in this story; the queue's visibility is 6 times it, as AWS advises
FUNCTION_TIMEOUT = 1.0
VISIBILITY = 6


@pytest.fixture
def function_env(moto_server, tmp_path):  # noqa: F811
    """The function's settings, on moto_server: its queues under a fresh prefix, and a
    DynamoDB idempotency table of its own."""
    prefix = f"lease{uuid.uuid4().hex[:8]}-"
    table = f"idem-{uuid.uuid4().hex[:8]}"
    env = {
        "MAILBAG_BROKER_URL": f"sqs://?region={REGION}&endpoint={moto_server}&prefix={prefix}&wait=1"
        f"&visibility={VISIBILITY}",
        "MAILBAG_IDEMPOTENCY_URL": f"dynamodb://{table}?region={REGION}&endpoint_url={moto_server}",
    }
    with dummy_aws_credentials():
        yield env, prefix
        delete_prefixed(moto_server, prefix)
        boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_server).delete_table(TableName=table)


async def test_a_dead_invocations_lease_does_not_stop_the_next_delivery_from_running_the_handler(
    moto_server,  # noqa: F811
    function_env,
    tmp_path,
):
    # Given the app's queue (visibility 6 x the function's 1 s timeout) holding one order
    env, prefix = function_env
    ran: list[str] = []
    app = orders_app(lambda payload: ran.append(payload["order"]))
    async with await open_broker(env["MAILBAG_BROKER_URL"]) as broker:
        await broker.declare(app.topology)
        await broker.publish(TOPIC, [Message(TOPIC, json.dumps({"order": "o-1"}).encode())])
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=moto_server)
    url = queue_url(sqs, f"{prefix}{QUEUE.replace('.', '_')}")
    first = sqs_event(url, 1, client=sqs)
    # When an invocation with 1 s left claims the record and dies in its handler
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(first))
    died = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tests.aws.dying_invocation", str(event_file), str(FUNCTION_TIMEOUT)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert died.returncode == -9, died.stderr
    # Then SQS delivers the record again once its visibility ends ...
    again = sqs_event(url, 1, timeout=VISIBILITY + 10, client=sqs)
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    # ... and the next invocation runs the handler (the dead run's lease has ended), once
    settings = WorkerSettings(**{k.removeprefix("MAILBAG_").lower(): v for k, v in env.items()})
    handler = handler_for(app, settings=settings)
    try:
        answer = await asyncio.to_thread(handler, again, LambdaContext(60))
    finally:
        await asyncio.to_thread(handler.close)
    assert answer == {"batchItemFailures": []}
    assert ran == ["o-1"]
