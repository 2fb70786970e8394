"""The Lambda entry point on moto: events built from messages really published through
SNS and received from SQS, answered with `batchItemFailures`, and settled afterwards as
the event source mapping would (reported records stay, the rest are deleted)."""

import asyncio
import json
import uuid

import pytest
from pydantic import BaseModel

from mailbag.broker import Message, RetryPolicy
from mailbag.broker import headers as h
from mailbag.broker.sqs.mapping import REDRIVE_HEADROOM
from mailbag.testing import sqs_event
from mailbag.workers import App, Context, Postpone, RetryLater, WorkerSettings
from mailbag.workers.aws_lambda import BatchFailed, handler_for
from tests.aws.events import (
    LambdaContext,
    failed_ids,
    queue_arn,
    queue_url,
    settle_like_lambda,
    visible_count,
)
from tests.moto_server import REGION

TOPIC = "orders.created"
QUICK = RetryPolicy(max_attempts=3, initial_delay=0.0)


class Order(BaseModel):
    n: int


def order(n, **fields) -> Message:
    return Message(TOPIC, json.dumps({"n": n}).encode(), **fields)


async def invoke(handler, event, seconds_left: float = 60.0) -> dict:
    """Call the (synchronous) handler as the Lambda runtime does, off the test's loop."""
    return await asyncio.to_thread(handler, event, LambdaContext(seconds_left))


async def outcome(handler, event, seconds_left: float = 60.0) -> dict | None:
    """The handler's answer, or None when the invocation raised `BatchFailed` (which
    must then name every record of the batch)."""
    try:
        return await invoke(handler, event, seconds_left)
    except BatchFailed as exc:
        assert sorted(exc.message_ids) == sorted(r["messageId"] for r in event["Records"])
        return None


def in_flight(sqs, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def orders_app(seen: list, fail: set | None = None, **options) -> App:
    """An app whose handler records (n, message id, attempt, tenant header) and raises
    a retryable error for the order numbers in `fail`."""
    app = App("shop")
    fail = fail if fail is not None else set()

    @app.handler(TOPIC, queue="shop.orders", model=Order, retry=QUICK, **options)
    async def on_order(o: Order, ctx: Context) -> None:
        seen.append((o.n, ctx.message_id, ctx.attempt, ctx.message.headers.get("tenant")))
        if o.n in fail:
            raise ConnectionError(f"order {o.n}: upstream down")

    return app


@pytest.mark.parametrize("delivery", ["raw", "envelope"])
async def test_a_batch_that_succeeds_reports_no_failure_whatever_the_sns_delivery(
    broker, sqs, sns, prefix, lambda_for, delivery
):
    # Given the app's queue subscribed with raw delivery, or (as some deployments do)
    # with the SNS JSON envelope
    seen: list = []
    app = orders_app(seen)
    await broker.declare(app.topology)
    url = queue_url(sqs, f"{prefix}shop_orders")
    if delivery == "envelope":
        topic_arn = next(
            t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f"{prefix}orders_created")
        )
        [sub] = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
        sns.unsubscribe(SubscriptionArn=sub["SubscriptionArn"])
        sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn(sqs, url))
    # When three orders are published and the batch is handed to the function
    sent = [order(i, headers={"tenant": "acme"}, correlation_id="flow-1") for i in range(3)]
    await broker.publish(TOPIC, sent)
    event = sqs_event(url, 3, client=sqs)
    body = json.loads(event["Records"][0]["body"])
    assert (body.get("Type") == "Notification") == (delivery == "envelope")
    answer = await invoke(lambda_for(app), event)
    # Then every order ran once, as published, and nothing is reported
    assert answer == {"batchItemFailures": []}
    assert sorted(seen) == [(i, m.id, 1, "acme") for i, m in enumerate(sent)]
    settle_like_lambda(sqs, url, event, answer)
    assert visible_count(sqs, url) == 0 and in_flight(sqs, url) == 0


async def test_only_the_failed_record_is_reported_and_it_comes_back_after_its_backoff(broker, sqs, prefix, lambda_for):
    # Given a handler that fails on order 1 (backoff 0 s, the queue's visibility is 30 s)
    seen: list = []
    fail = {1}
    app = orders_app(seen, fail)
    await broker.declare(app.topology)
    sent = [order(i) for i in range(3)]
    await broker.publish(TOPIC, sent)
    url = queue_url(sqs, f"{prefix}shop_orders")
    handler = lambda_for(app)
    # When the batch runs
    event = sqs_event(url, 3, client=sqs)
    answer = await invoke(handler, event)
    # Then only order 1's record is reported
    by_message = {json.loads(r["body"])["n"]: r["messageId"] for r in event["Records"]}
    assert failed_ids(answer) == [by_message[1]]
    settle_like_lambda(sqs, url, event, answer)
    # And it is visible again at once (its visibility was set to the 0 s backoff) with
    # attempt 2, and succeeds then
    fail.clear()
    again = sqs_event(url, 1, timeout=5, client=sqs)
    [rec] = again["Records"]
    assert rec["messageId"] == by_message[1] and rec["attributes"]["ApproximateReceiveCount"] == "2"
    answer = await invoke(handler, again)
    assert answer == {"batchItemFailures": []}
    assert [s[:3] for s in seen if s[0] == 1] == [(1, sent[1].id, 1), (1, sent[1].id, 2)]


async def test_fifo_batch_stops_a_group_at_its_first_failure_and_reports_the_rest_of_it(
    broker, sqs, prefix, lambda_for
):
    # Given an ordered queue and a handler that fails on A2
    seen: list = []
    fail = {"A2"}
    app = App("shop")

    @app.handler(TOPIC, queue="shop.ledger", ordered=True, retry=QUICK)
    async def book(entry: dict, ctx: Context) -> None:
        seen.append(entry["name"])
        if entry["name"] in fail:
            raise ConnectionError("ledger busy")

    await broker.declare(app.topology)
    names = ["A1", "B1", "A2", "B2", "A3"]
    await broker.publish(TOPIC, [Message(TOPIC, json.dumps({"name": n}).encode(), ordering_key=n[0]) for n in names])
    url = queue_url(sqs, f"{prefix}shop_ledger.fifo")
    handler = lambda_for(app)
    # When the batch runs
    event = sqs_event(url, 5, client=sqs)
    assert event["Records"][0]["eventSourceARN"].endswith(".fifo")
    answer = await invoke(handler, event)
    # Then group A stops at A2: A2 and A3 are reported, A3 never ran; group B went on
    ids = {json.loads(r["body"])["name"]: r["messageId"] for r in event["Records"]}
    assert failed_ids(answer) == [ids["A2"], ids["A3"]]
    assert [n for n in seen if n[0] == "A"] == ["A1", "A2"]
    assert [n for n in seen if n[0] == "B"] == ["B1", "B2"]
    # And the group comes back in order, A2 (attempt 2) before A3
    settle_like_lambda(sqs, url, event, answer)
    fail.clear()
    again = sqs_event(url, 2, timeout=5, client=sqs)
    assert [json.loads(r["body"])["name"] for r in again["Records"]] == ["A2", "A3"]
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    assert await invoke(handler, again) == {"batchItemFailures": []}
    assert [n for n in seen if n[0] == "A"] == ["A1", "A2", "A2", "A3"]


@pytest.mark.parametrize("raising", [True, False])
async def test_a_batch_whose_every_record_fails_raises_or_reports_them_all_per_setting(
    broker, sqs, prefix, lambda_for, raising
):
    # Given a handler that fails on every order (backoff 0 s)
    seen: list = []
    app = orders_app(seen, fail={0, 1, 2})
    await broker.declare(app.topology)
    await broker.publish(TOPIC, [order(i) for i in range(3)])
    url = queue_url(sqs, f"{prefix}shop_orders")
    handler = lambda_for(app, raise_on_entire_batch_failure=raising)
    # When the batch runs
    event = sqs_event(url, 3, client=sqs)
    ids = sorted(r["messageId"] for r in event["Records"])
    if raising:
        # Then (the default) the invocation raises, naming every record, so Lambda backs off
        with pytest.raises(BatchFailed, match="all 3 record"):
            await invoke(handler, event)
        answer = None
    else:
        # Then (raise_on_entire_batch_failure=False) the answer reports them all
        answer = await invoke(handler, event)
        assert sorted(failed_ids(answer)) == ids
    assert sorted(s[0] for s in seen) == [0, 1, 2]
    # And either way nothing is deleted: each record comes back after its backoff, attempt 2
    settle_like_lambda(sqs, url, event, answer)
    again = sqs_event(url, 3, timeout=5, client=sqs)
    assert sorted(r["messageId"] for r in again["Records"]) == ids
    assert {r["attributes"]["ApproximateReceiveCount"] for r in again["Records"]} == {"2"}


async def test_a_batch_where_some_records_fail_is_answered_not_raised(broker, sqs, prefix, lambda_for):
    # Given one record that is handled and one that fails
    app = orders_app([], fail={1})
    await broker.declare(app.topology)
    await broker.publish(TOPIC, [order(0), order(1)])
    url = queue_url(sqs, f"{prefix}shop_orders")
    event = sqs_event(url, 2, client=sqs)
    # When the batch runs with the default setting, Then it answers with the failed one only
    answer = await invoke(lambda_for(app), event)
    assert len(failed_ids(answer)) == 1


async def test_strict_fifo_reports_the_failing_record_and_every_later_record_of_the_batch(
    broker, sqs, prefix, lambda_for
):
    # Given an ordered queue, a handler that fails on A2, and the strict FIFO mode
    seen: list = []
    fail = {"A2"}
    app = App("shop")

    @app.handler(TOPIC, queue="shop.ledger", ordered=True, retry=QUICK)
    async def book(entry: dict, ctx: Context) -> None:
        seen.append(entry["name"])
        if entry["name"] in fail:
            raise ConnectionError("ledger busy")

    await broker.declare(app.topology)
    names = ["A1", "B1", "A2", "B2", "A3"]
    await broker.publish(TOPIC, [Message(TOPIC, json.dumps({"name": n}).encode(), ordering_key=n[0]) for n in names])
    url = queue_url(sqs, f"{prefix}shop_ledger.fifo")
    handler = lambda_for(app, fifo="batch")
    # When the batch runs
    event = sqs_event(url, 5, client=sqs)
    order_in_batch = [json.loads(r["body"])["name"] for r in event["Records"]]
    answer = await invoke(handler, event)
    # Then the records ran one at a time in batch order up to A2, and A2 and every record
    # after it in the batch (B2 of the other group too) are reported, unrun
    stop = order_in_batch.index("A2")
    assert seen == order_in_batch[: stop + 1]
    ids = {json.loads(r["body"])["name"]: r["messageId"] for r in event["Records"]}
    assert failed_ids(answer) == [ids[n] for n in order_in_batch[stop:]]
    # And they come back in the same order, A2 on attempt 2
    settle_like_lambda(sqs, url, event, answer)
    fail.clear()
    again = sqs_event(url, len(order_in_batch) - stop, timeout=5, client=sqs)
    assert sorted(json.loads(r["body"])["name"] for r in again["Records"]) == sorted(order_in_batch[stop:])
    assert await invoke(handler, again) == {"batchItemFailures": []}


def test_the_fifo_mode_is_checked_when_the_entry_point_is_made():
    with pytest.raises(ValueError, match="fifo must be 'group' or 'batch'"):
        handler_for(
            orders_app([]),
            settings=WorkerSettings(broker_url=f"sqs://?region={REGION}", idempotency_url="memory://"),
            fifo="strict",  # type: ignore[arg-type]
        )


async def test_invalid_and_undecodable_records_go_to_the_dlq_with_their_reason_and_are_not_reported(
    broker, sqs, prefix, lambda_for
):
    # Given a record whose payload fails the model, and one that is no message of ours
    # (it says its body is base64, and it is not)
    seen: list = []
    app = orders_app(seen)
    await broker.declare(app.topology)
    bad = Message(TOPIC, b'{"n": "many"}')
    await broker.publish(TOPIC, [bad])
    url = queue_url(sqs, f"{prefix}shop_orders")
    sqs.send_message(
        QueueUrl=url,
        MessageBody="abc",
        MessageAttributes={"mailbag.body-encoding": {"DataType": "String", "StringValue": "base64"}},
    )
    # When the batch runs
    event = sqs_event(url, 2, client=sqs)
    answer = await invoke(lambda_for(app), event)
    # Then neither is reported (Lambda deletes them), the handler never ran, and both
    # wait in the DLQ with the reason
    assert answer == {"batchItemFailures": []}
    assert seen == []
    dead = await broker.browse("shop.orders.dlq")
    reasons = {m.id: m.headers[h.DEAD_REASON] for m in dead}
    assert reasons[bad.id].startswith("payload failed validation: n:")
    [other] = [r for i, r in reasons.items() if i != bad.id]
    assert other.startswith("undecodable SQS message:")
    assert all(m.headers[h.ORIGIN_QUEUE] == "shop.orders" for m in dead)
    settle_like_lambda(sqs, url, event, answer)
    assert visible_count(sqs, url) == 0 and in_flight(sqs, url) == 0


async def test_a_redelivered_record_runs_its_handler_once_with_the_dynamodb_store(broker, sqs, prefix, lambda_for):
    # Given the function with its idempotency records in DynamoDB
    seen: list = []
    app = orders_app(seen)
    await broker.declare(app.topology)
    sent = order(7)
    await broker.publish(TOPIC, [sent])
    url = queue_url(sqs, f"{prefix}shop_orders")
    handler = lambda_for(app, idempotency_url=f"dynamodb://idem-{uuid.uuid4().hex[:8]}?region={REGION}")
    # When the record is handled, but SQS delivers it again (at least once)
    first = sqs_event(url, 1, client=sqs)
    assert await invoke(handler, first) == {"batchItemFailures": []}
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["Records"][0]["receiptHandle"], VisibilityTimeout=0)
    second = sqs_event(url, 1, timeout=5, client=sqs)
    assert second["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"
    answer = await invoke(handler, second)
    # Then the handler ran once and the duplicate is settled, not reported
    assert answer == {"batchItemFailures": []}
    assert seen == [(7, sent.id, 1, None)]


@pytest.mark.parametrize(
    "failure, reason",
    [("error", "failed after 3 attempt(s): ConnectionError"), ("retry-later", h.DELIVERY_LIMIT_EXCEEDED)],
)
async def test_retries_stop_at_the_queues_max_receive_count_and_the_message_lands_in_the_dlq(
    broker, sqs, prefix, lambda_for, failure, reason
):
    # Given a handler that always fails, on a queue of 3 attempts (its redrive maxReceiveCount has headroom)
    app = App("shop")
    runs: list[int] = []

    @app.handler(TOPIC, queue="shop.orders", retry=QUICK)
    async def on_order(payload: dict, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if failure == "error":
            raise ConnectionError("upstream down")
        raise RetryLater(0)

    await broker.declare(app.topology)
    url = queue_url(sqs, f"{prefix}shop_orders")
    redrive = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    assert json.loads(redrive)["maxReceiveCount"] == 3 + REDRIVE_HEADROOM
    sent = order(1)
    await broker.publish(TOPIC, [sent])
    handler = lambda_for(app)
    # When SQS delivers it again after each failed invocation (the batch is that one
    # record, so the invocation raises) and its backoff
    answers = []
    for attempt in (1, 2, 3):
        event = sqs_event(url, 1, timeout=5, client=sqs)
        assert event["Records"][0]["attributes"]["ApproximateReceiveCount"] == str(attempt)
        answers.append(await outcome(handler, event))
        settle_like_lambda(sqs, url, event, answers[-1])
    # Then it fails twice, and on the third receive it goes to the DLQ with why
    assert answers == [None, None, {"batchItemFailures": []}]
    assert runs == [1, 2, 3]
    [dead] = await broker.browse("shop.orders.dlq")
    assert dead.id == sent.id and dead.headers[h.DEAD_REASON].startswith(reason)
    assert dead.headers[h.ATTEMPTS] == 3
    assert visible_count(sqs, url) == 0 and in_flight(sqs, url) == 0


async def test_records_still_running_near_the_lambda_timeout_are_reported_and_released(broker, sqs, prefix, lambda_for):
    # Given a handler that hangs, and an invocation with 1.5 s left (margin 1 s)
    app = App("shop")

    @app.handler(TOPIC, queue="shop.orders")
    async def hang(payload: dict) -> None:
        await asyncio.Event().wait()

    await broker.declare(app.topology)
    sent = order(1)
    await broker.publish(TOPIC, [sent])
    url = queue_url(sqs, f"{prefix}shop_orders")
    handler = lambda_for(app, margin=1.0, raise_on_entire_batch_failure=False)
    event = sqs_event(url, 1, client=sqs)
    # When it runs
    answer = await invoke(handler, event, seconds_left=1.5)
    # Then the function answers in time, reporting the record, which is visible again at once
    assert failed_ids(answer) == [event["Records"][0]["messageId"]]
    again = sqs_event(url, 1, timeout=5, client=sqs)
    assert again["Records"][0]["attributes"]["ApproximateReceiveCount"] == "2"


async def test_a_record_from_a_queue_the_app_does_not_have_fails_the_invocation_with_the_reason(lambda_for):
    app = orders_app([])
    record = {
        "messageId": "m1",
        "body": "{}",
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:elsewhere",
    }
    with pytest.raises(ValueError, match=r"SQS queue 'elsewhere' carries none of app 'shop'.*prefix"):
        await asyncio.to_thread(lambda_for(app), {"Records": [record]}, None)


def test_the_entry_point_refuses_a_broker_that_is_not_sqs_and_a_missing_shared_store():
    app = orders_app([])
    with pytest.raises(ValueError, match="MAILBAG_BROKER_URL must be sqs://"):
        handler_for(
            app, settings=WorkerSettings(broker_url="amqp://guest:secret@localhost/", idempotency_url="memory://")
        )
    with pytest.raises(ValueError, match="MAILBAG_IDEMPOTENCY_URL"):
        handler_for(app, settings=WorkerSettings(broker_url=f"sqs://?region={REGION}", idempotency_url=None))


def test_the_lambda_runtimes_log_handler_gets_redaction_and_ids(monkeypatch):
    # Given a root log handler of the host's own, as the Lambda runtime installs
    import io
    import logging

    stream = io.StringIO()
    host = logging.StreamHandler(stream)
    monkeypatch.setattr(logging.getLogger(), "handlers", [host])
    # When an entry point is made
    handler_for(App("shop"), settings=WorkerSettings(broker_url=f"sqs://?region={REGION}"))
    # Then what reaches that handler is redacted
    logging.getLogger("mailbag.test").warning("connecting to %s", "amqp://svc:hunter2@rabbit/")
    assert stream.getvalue() == "connecting to amqp://svc:***@rabbit/\n"


async def test_a_fifo_follower_held_back_behind_a_failing_head_is_charged_no_attempt(broker, sqs, prefix, lambda_for):
    # Given an ordered queue of 3 attempts; the head of a group always fails, the record after it fails once
    runs: list[tuple[str, int]] = []
    app = App("shop")

    @app.handler(TOPIC, queue="shop.ledger", ordered=True, retry=QUICK)
    async def book(entry: dict, ctx: Context) -> None:
        runs.append((entry["name"], ctx.attempt))
        if entry["name"] == "head" or ctx.attempt == 1:
            raise ConnectionError(f"{entry['name']} fails")

    await broker.declare(app.topology)
    await broker.publish(
        TOPIC, [Message(TOPIC, json.dumps({"name": n}).encode(), ordering_key="k") for n in ("head", "follower")]
    )
    url = queue_url(sqs, f"{prefix}shop_ledger.fifo")
    handler = lambda_for(app)
    # When SQS hands the group to the function batch after batch, as the event source mapping does
    for _ in range(6):
        if ("follower", 2) in runs:
            break
        head_alive = sum(r[0] == "head" for r in runs) < 3
        event = sqs_event(url, 2 if head_alive else 1, timeout=10, client=sqs)  # the whole group while it has two
        settle_like_lambda(sqs, url, event, await outcome(handler, event))  # a wholly failed batch raises
    # Then the head ran exactly 3 times and was dead-lettered, and the follower started at attempt 1
    assert [r for r in runs if r[0] == "head"] == [("head", 1), ("head", 2), ("head", 3)]
    assert [r for r in runs if r[0] == "follower"] == [("follower", 1), ("follower", 2)]
    dlq = queue_url(sqs, f"{prefix}shop_ledger_dlq.fifo")
    assert visible_count(sqs, dlq) == 1


@pytest.mark.parametrize("ordered", [False, True])
async def test_a_postponed_record_comes_back_without_using_an_attempt(broker, sqs, prefix, lambda_for, ordered):
    # Given a handler that postpones its message twice (its dependency's circuit is open), on a queue of 2 attempts
    runs: list[int] = []
    app = App("shop")

    @app.handler(TOPIC, queue="shop.ledger", ordered=ordered, retry=RetryPolicy(max_attempts=2, initial_delay=0))
    async def book(entry: dict, ctx: Context) -> None:
        runs.append(ctx.attempt)
        if len(runs) <= 2:
            raise Postpone(0, "circuit open")

    await broker.declare(app.topology)
    await broker.publish(TOPIC, [Message(TOPIC, b'{"name": "a"}', ordering_key="k")])
    url = queue_url(sqs, f"{prefix}shop_ledger" + (".fifo" if ordered else ""))
    handler = lambda_for(app)
    # When SQS hands it over three times (FIFO: hidden and back; standard: a delayed copy)
    for _ in range(3):
        event = sqs_event(url, 1, timeout=10, client=sqs)
        settle_like_lambda(sqs, url, event, await outcome(handler, event))
    # Then every run was attempt 1, and nothing was dead-lettered
    assert runs == [1, 1, 1]
    dlq = queue_url(sqs, f"{prefix}shop_ledger_dlq" + (".fifo" if ordered else ""))
    assert visible_count(sqs, dlq) == 0
