"""`sqs_event` / `sns_event`: Lambda events from messages really received from a moto
queue, which `handler_for(app)` answers as it answers Lambda."""

import asyncio
import json
import uuid

from mailbag import App, Message, connect
from mailbag.broker.sqs.marshal import from_lambda_record
from mailbag.testing import LambdaContext, sns_event, sqs_event
from mailbag.workers import WorkerSettings
from mailbag.workers.aws_lambda import handler_for
from tests.moto_server import REGION


def shop(fail: set[int]) -> App:
    app = App("shop")

    @app.handler("orders.placed", queue="shop.orders")
    async def place(order: dict) -> None:
        if order["n"] in fail:
            raise ConnectionError(f"order {order['n']}: upstream down")

    return app


async def test_a_batch_with_one_failing_record_reports_only_that_record(aws):
    # Given three orders published through SNS to the app's queue, one of which fails
    prefix = f"e{uuid.uuid4().hex[:6]}-"
    url = f"sqs://?region={REGION}&prefix={prefix}"
    app = shop(fail={1})
    async with await connect(url) as broker:
        await broker.declare(app.topology)
        sent = [Message("orders.placed", json.dumps({"n": n}).encode()) for n in range(3)]
        await broker.publish("orders.placed", sent)
    handler = handler_for(app, settings=WorkerSettings(broker_url=url, idempotency_url="memory://"))
    try:
        # When Lambda hands the function a batch received from that queue
        event = await asyncio.to_thread(sqs_event, "shop.orders", 3, prefix=prefix, region=REGION)
        answer = await asyncio.to_thread(handler, event, LambdaContext(30))
    finally:
        await asyncio.to_thread(handler.close)
    # Then only the failing order's record is reported, to come back later
    by_order = {json.loads(r["body"])["n"]: r["messageId"] for r in event["Records"]}
    assert answer == {"batchItemFailures": [{"itemIdentifier": by_order[1]}]}
    assert {r["eventSourceARN"].rsplit(":", 1)[-1] for r in event["Records"]} == {f"{prefix}shop_orders"}


async def test_an_sns_event_carries_the_same_message_in_its_envelope(aws, sqs):
    # Given a message published with headers, a key and a correlation id
    prefix = f"e{uuid.uuid4().hex[:6]}-"
    app = shop(fail=set())
    async with await connect(f"sqs://?region={REGION}&prefix={prefix}") as broker:
        await broker.declare(app.topology)
        sent = Message("orders.placed", b'{"n": 7}', headers={"tenant": "acme"}, correlation_id="c-1")
        await broker.publish("orders.placed", [sent])
    # When it is received as SNS would deliver it without raw delivery
    [record] = sns_event("shop.orders", prefix=prefix, client=sqs)["Records"]
    # Then the body is SNS's notification, and the message inside it is the one sent
    envelope = json.loads(record["body"])
    assert envelope["Type"] == "Notification" and record["messageAttributes"] == {}
    assert envelope["TopicArn"].endswith(":orders_placed")
    assert from_lambda_record(record, "orders.placed") == sent
