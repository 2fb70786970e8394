"""The exported template deployed on moto's CloudFormation: the resources it makes,
that they equal what the adapter declares itself, and that its IAM roles allow every
call a worker and a dead-letter replay make, on their own resources only."""

import ast
import asyncio
import io
import json
import zipfile

import boto3
import pytest
from moto import mock_aws
from moto.iam.access_control import IAMPolicy, PermissionResult

from mailbag.broker import Message
from mailbag.broker.sqs import open_broker
from mailbag.broker.sqs.mapping import REDRIVE_HEADROOM
from mailbag.deploy.cloudformation import LambdaFunctions, template
from mailbag.dlq import DeadLetters
from mailbag.examples.orders.app import app as orders_app
from mailbag.testing import LambdaContext, sqs_event
from mailbag.workers import App, Context, Reject, WorkerSettings
from mailbag.workers.aws_lambda import handler_for
from tests.cloudformation.stack import deploy
from tests.cloudformation.topologies import everything
from tests.conformance.env import drain, eventually, next_delivery
from tests.moto_server import REGION

ACCOUNT = "123456789012"


@pytest.fixture
def aws():
    """moto in process for the whole test, the broker's worker threads included."""
    with mock_aws():
        names = ("cloudformation", "sns", "sqs", "iam", "lambda", "s3")
        yield {name: boto3.client(name, region_name=REGION) for name in names}


def _queue_attributes(sqs, name: str) -> dict[str, str]:
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def _subscriptions(sns, prefix: str) -> dict[tuple[str, str], dict[str, str]]:
    """(topic name, queue name) -> the subscription's attributes, for names under prefix."""
    found = {}
    for s in sns.list_subscriptions()["Subscriptions"]:
        topic, queue = s["TopicArn"].rsplit(":", 1)[-1], s["Endpoint"].rsplit(":", 1)[-1]
        if topic.startswith(prefix):
            found[(topic, queue)] = sns.get_subscription_attributes(SubscriptionArn=s["SubscriptionArn"])["Attributes"]
    return found


def test_the_order_app_stack_makes_its_topics_queues_subscriptions_and_roles(aws):
    # Given the order app's template, deployed
    topology = orders_app.topology
    outputs = deploy(aws["cloudformation"], "orders", template(topology, prefix="shop-"))
    sns, sqs = aws["sns"], aws["sqs"]
    # Then every topic exists, and every queue with its DLQ and redrive
    topic_arns = {t["TopicArn"] for t in sns.list_topics()["Topics"]}
    assert {f"arn:aws:sns:{REGION}:{ACCOUNT}:shop-{t.replace('.', '_')}" for t in topology.topics} == topic_arns
    for q in topology.queues:
        name = "shop-" + q.name.replace(".", "_")
        attrs = _queue_attributes(sqs, name)
        assert json.loads(attrs["RedrivePolicy"]) == {
            "deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}_dlq",
            "maxReceiveCount": q.retry.max_attempts + REDRIVE_HEADROOM,
        }
        # the queue admits its own topics only
        [statement] = json.loads(attrs["Policy"])["Statement"]
        assert statement["Resource"] == attrs["QueueArn"]
        assert sorted(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(
            f"arn:aws:sns:{REGION}:{ACCOUNT}:shop-{t.replace('.', '_')}" for t in q.topics
        )
        assert outputs["Queue" + "".join(w.capitalize() for w in q.name.split(".")) + "Url"].endswith("/" + name)
    # And each subscription delivers raw
    subs = _subscriptions(sns, "shop-")
    assert len(subs) == sum(len(q.subscriptions) for q in topology.queues)
    assert {s["RawMessageDelivery"] for s in subs.values()} == {"true"}
    # And both roles carry their policy
    iam = aws["iam"]
    for role in ("WorkerRole", "DeadLetterReplayRole"):
        name = outputs[f"{role}Arn"].rsplit("/", 1)[-1]
        assert iam.list_role_policies(RoleName=name)["PolicyNames"] == ["mailbag"]


def test_the_lambda_stack_makes_a_function_per_queue_triggered_with_report_batch_item_failures(aws):
    # Given the order app exported with Lambda functions (20 s timeout), their code in S3
    s3 = aws["s3"]
    s3.create_bucket(Bucket="shop-code", CreateBucketConfiguration={"LocationConstraint": REGION})
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("shop/aws.py", "handler = None\n")
    s3.put_object(Bucket="shop-code", Key="shop.zip", Body=package.getvalue())
    functions = LambdaFunctions("shop.aws.handler", timeout=20)
    # When it is deployed
    outputs = deploy(
        aws["cloudformation"],
        "shop-lambda",
        template(orders_app.topology, prefix="shop-", functions=functions),
        LambdaCodeS3Bucket="shop-code",
        LambdaCodeS3Key="shop.zip",
        IdempotencyUrl=f"dynamodb://shop-idempotency?region={REGION}",
    )
    # Then every queue has an event source mapping to its own function, reporting item failures
    lam, sqs = aws["lambda"], aws["sqs"]
    mappings = lam.list_event_source_mappings()["EventSourceMappings"]
    queues = {"shop-" + q.name.replace(".", "_") for q in orders_app.topology.queues}
    assert sorted(m["EventSourceArn"].rsplit(":", 1)[-1] for m in mappings) == sorted(queues)
    assert {m["FunctionResponseTypes"][0] for m in mappings} == {"ReportBatchItemFailures"}
    assert all(len(m["FunctionResponseTypes"]) == 1 and m["BatchSize"] == 10 for m in mappings)
    assert len({m["FunctionArn"] for m in mappings}) == len(queues)
    # And each function runs the handler, with the broker URL of the stack's queues
    for m in mappings:
        config = lam.get_function_configuration(FunctionName=m["FunctionArn"])
        assert (config["Handler"], config["Runtime"], config["Timeout"]) == ("shop.aws.handler", "python3.12", 20)
        assert config["Environment"]["Variables"] == {
            "MAILBAG_BROKER_URL": f"sqs://?region={REGION}&prefix=shop-",
            "MAILBAG_IDEMPOTENCY_URL": f"dynamodb://shop-idempotency?region={REGION}",
        }
        assert config["FunctionArn"] in outputs.values()
    # And every queue hides a received record for 6 x the timeout, redriving after >= 5 receives
    for name in queues:
        attrs = _queue_attributes(sqs, name)
        assert attrs["VisibilityTimeout"] == "120"
        assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] >= 5


async def test_the_stack_makes_exactly_what_the_adapter_declares(aws):
    # Given the same topology declared by the adapter under one prefix ...
    async with await open_broker(f"sqs://?region={REGION}&prefix=api-&wait=1") as broker:
        await broker.declare(everything())
    # ... and deployed as a stack under another
    deploy(aws["cloudformation"], "same", template(everything(), prefix="cfn-"))
    sns, sqs = aws["sns"], aws["sqs"]

    def comparable(text: str, prefix: str) -> str:
        return text.replace(prefix, "PREFIX-")

    # Then queues have the same attributes (but for when they were made), tags and policy
    volatile = {"CreatedTimestamp", "LastModifiedTimestamp"}
    api_queues = sorted(u.rsplit("/", 1)[-1] for u in sqs.list_queues(QueueNamePrefix="api-")["QueueUrls"])
    assert len(api_queues) == 6
    for api_name in api_queues:
        cfn_name = "cfn-" + api_name.removeprefix("api-")
        api, cfn = _queue_attributes(sqs, api_name), _queue_attributes(sqs, cfn_name)
        for key in set(api) | set(cfn):
            if key not in volatile:
                mine = cfn.get(key)
                assert comparable(api.get(key, ""), "api-") == comparable(mine or "", "cfn-"), (api_name, key)
        tags = [
            sqs.list_queue_tags(QueueUrl=sqs.get_queue_url(QueueName=n)["QueueUrl"])["Tags"]
            for n in (api_name, cfn_name)
        ]
        assert tags[0] == tags[1]
    # And topics the same FIFO settings, subscriptions the same attributes
    for topic in ("payments.fifo", "orders_created", "announcements"):
        api, cfn = (
            sns.get_topic_attributes(TopicArn=f"arn:aws:sns:{REGION}:{ACCOUNT}:{p}{topic}")["Attributes"]
            for p in ("api-", "cfn-")
        )
        assert (api.get("FifoTopic"), api.get("ContentBasedDeduplication")) == (
            cfn.get("FifoTopic"),
            cfn.get("ContentBasedDeduplication"),
        )
    volatile_sub = {"SubscriptionArn", "TopicArn", "Endpoint"}
    api_subs, cfn_subs = _subscriptions(sns, "api-"), _subscriptions(sns, "cfn-")
    assert len(api_subs) == len(cfn_subs) == 4
    for (topic, queue), attrs in api_subs.items():
        mine = cfn_subs[("cfn-" + topic.removeprefix("api-"), "cfn-" + queue.removeprefix("api-"))]
        assert {k: v for k, v in attrs.items() if k not in volatile_sub} == {
            k: v for k, v in mine.items() if k not in volatile_sub
        }


class Calls:
    """The AWS operations a broker makes, as (IAM action, resource ARN)."""

    def __init__(self, broker) -> None:
        self.made: set[tuple[str, str]] = set()
        broker.aws.sqs.meta.events.register("provide-client-params.sqs.*", self._sqs)
        broker.aws.sns.meta.events.register("provide-client-params.sns.*", self._sns)

    def _sqs(self, params, model, **_) -> None:
        queue = params.get("QueueUrl", params.get("QueueName", "")).rsplit("/", 1)[-1]
        self.made.add((_action("sqs", model.name), f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}" if queue else "*"))

    def _sns(self, params, model, **_) -> None:
        self.made.add((_action("sns", model.name), params.get("SubscriptionArn", params.get("TopicArn", "*"))))


def _action(service: str, operation: str) -> str:
    """The IAM action an API operation needs: a batch needs its single-message action."""
    return f"{service}:{operation.removesuffix('Batch')}"


def _role_policy(iam, outputs: dict[str, str], role: str) -> IAMPolicy:
    name = outputs[f"{role}Arn"].rsplit("/", 1)[-1]
    document = iam.get_role_policy(RoleName=name, PolicyName="mailbag")["PolicyDocument"]
    if isinstance(document, str):  # moto 5.2 keeps a role policy from a stack as the text of a dict
        document = ast.literal_eval(document)
    return IAMPolicy({"policy_document": json.dumps(document)})


def _denied(policy: IAMPolicy, calls: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted(c for c in calls if policy.is_action_permitted(*c) != PermissionResult.PERMITTED)


async def test_the_roles_allow_what_a_worker_and_a_replay_call_and_nothing_beyond_their_queues(aws):
    # Given the stack, and a broker (as a worker) on what it made
    topology = everything()
    outputs = deploy(aws["cloudformation"], "roles", template(topology, prefix="p-"))
    worker_policy = _role_policy(aws["iam"], outputs, "WorkerRole")
    replay_policy = _role_policy(aws["iam"], outputs, "DeadLetterReplayRole")
    async with await open_broker(f"sqs://?region={REGION}&prefix=p-&wait=1&linger=0") as broker:
        worker = Calls(broker)
        # When it declares its topology as a starting worker does (finding it deployed),
        await broker.declare(topology)
        # publishes, consumes, retries, postpones, acks and dead-letters
        await broker.publish("orders.created", [Message("orders.created", b"1"), Message("orders.created", b"2")])
        await broker.publish("payments", [Message("payments", b"3", headers={"currency": "EUR", "priority": "5"})])
        async with broker.consume("audit") as consumer:
            first = await next_delivery(consumer)
            await first.retry(0)
            await broker.send("audit", [Message("orders.created", b"later")], delay=1)
            seen: set[bytes] = set()
            while len(seen) < 4:  # 1, 2, 3 and the postponed one, the retried one again
                d = await next_delivery(consumer)
                seen.add(d.message.body)
                await (d.dead_letter("rejected") if d.message.body == b"1" else d.ack())
        async with broker.consume("ledger.v1") as consumer:
            [d] = await drain(consumer, 1)
        await broker.stats("audit")

        async def parked() -> bool:
            return (await broker.stats("audit")).dead_letters >= 1

        await eventually(parked, what="the dead letter")
    # Then the worker role allows every call it made
    opening = ("sqs:ListQueues", "*")  # opening a broker checks access, before Calls can count
    worker.made.add(opening)
    assert "sqs:CreateQueue" not in {a for a, _ in worker.made}
    assert {a for a, _ in worker.made} >= {
        "sns:ListTopics",
        "sns:Publish",
        "sns:ListSubscriptionsByTopic",
        "sns:GetSubscriptionAttributes",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:SendMessage",
        "sqs:GetQueueUrl",
        "sqs:GetQueueAttributes",
    }
    assert _denied(worker_policy, worker.made) == []

    # When an operator lists and replays the dead letter with another broker
    async with await open_broker(f"sqs://?region={REGION}&prefix=p-&wait=1&linger=0") as broker:
        replay = Calls(broker)
        replay.made.add(opening)
        dead = DeadLetters(broker, "audit")
        assert [r.reason for r in await dead.ls()] == ["rejected"]
        assert (await dead.replay(all=True)).removed == 1
    # Then the replay role allows every call it made
    assert {a for a, _ in replay.made} >= {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"}
    assert _denied(replay_policy, replay.made) == []

    # And neither reaches beyond its queues: the worker no other queue, replay no live consuming
    elsewhere = f"arn:aws:sqs:{REGION}:{ACCOUNT}:someone-elses"
    beyond = {
        ("sqs:ReceiveMessage", elsewhere),
        ("sqs:SendMessage", elsewhere),
        ("sqs:GetQueueUrl", elsewhere),
        ("sns:Publish", f"arn:aws:sns:{REGION}:{ACCOUNT}:someone-elses"),
        ("sqs:PurgeQueue", elsewhere),
    }
    assert _denied(worker_policy, beyond) == sorted(beyond)
    live = f"arn:aws:sqs:{REGION}:{ACCOUNT}:p-audit"
    assert _denied(replay_policy, {("sqs:ReceiveMessage", live), ("sns:Publish", "*"), ("sqs:DeleteQueue", live)}) == [
        ("sns:Publish", "*"),
        ("sqs:DeleteQueue", live),
        ("sqs:ReceiveMessage", live),
    ]


def _code_in_s3(s3) -> tuple[str, str]:
    """A deployment package in moto's S3: (bucket, key)."""
    s3.create_bucket(Bucket="fn-code", CreateBucketConfiguration={"LocationConstraint": REGION})
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as z:
        z.writestr("svc/aws.py", "handler = None\n")
    s3.put_object(Bucket="fn-code", Key="svc.zip", Body=package.getvalue())
    return "fn-code", "svc.zip"


async def test_a_functions_role_allows_what_its_trigger_and_the_entry_point_call_on_its_queue_only(aws):
    # Given an app that publishes a follow-up, retries and dead-letters, deployed with a
    # Lambda function per queue; the triggers paused, so the test plays the mapping
    app = App("svc", topics=("orders.accepted",))

    @app.handler("orders.created", queue="svc.orders", idempotency=False)
    async def accept(order: dict, ctx: Context) -> None:
        if order["n"] == 1:
            raise ConnectionError("upstream down")
        if order["n"] == 2:
            raise Reject("bad order")
        await ctx.publish("orders.accepted", order)

    @app.handler("orders.accepted", queue="svc.audit", idempotency=False)
    async def audit(order: dict) -> None: ...

    bucket, key = _code_in_s3(aws["s3"])
    functions = LambdaFunctions("svc.aws.handler", idempotency=False)
    deploy(
        aws["cloudformation"],
        "svc",
        template(app.topology, prefix="svc-", functions=functions),
        LambdaCodeS3Bucket=bucket,
        LambdaCodeS3Key=key,
    )
    lam, sqs, iam = aws["lambda"], aws["sqs"], aws["iam"]
    mappings = lam.list_event_source_mappings()["EventSourceMappings"]
    for m in mappings:
        lam.update_event_source_mapping(UUID=m["UUID"], Enabled=False)
    [orders] = [m for m in mappings if m["EventSourceArn"].endswith(":svc-svc_orders")]
    role = lam.get_function_configuration(FunctionName=orders["FunctionArn"])["Role"].rsplit("/", 1)[-1]
    document = iam.get_role_policy(RoleName=role, PolicyName="mailbag")["PolicyDocument"]
    if isinstance(document, str):  # moto 5.2 keeps a role policy from a stack as the text of a dict
        document = ast.literal_eval(document)
    policy = IAMPolicy({"policy_document": json.dumps(document)})
    # When three orders arrive and the entry point handles the batch the trigger received
    url = sqs.get_queue_url(QueueName="svc-svc_orders")["QueueUrl"]
    async with await open_broker(f"sqs://?region={REGION}&prefix=svc-&wait=1") as publisher:
        await publisher.publish(
            "orders.created", [Message("orders.created", json.dumps({"n": n}).encode()) for n in range(3)]
        )
    event = sqs_event(url, 3, client=sqs)
    settings = WorkerSettings(broker_url=f"sqs://?region={REGION}&prefix=svc-", retry_jitter=False)
    handler = handler_for(app, settings=settings)
    try:
        await asyncio.to_thread(handler, {"Records": []}, None)  # opens the broker, as a first invocation does
        calls = Calls(handler._worker.broker)
        answer = await asyncio.to_thread(handler, event, LambdaContext(60))
    finally:
        await asyncio.to_thread(handler.close)
    assert len(answer["batchItemFailures"]) == 1
    # Then the function's role allows every call the entry point made, and those the
    # trigger makes to poll and delete
    queue_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:svc-svc_orders"
    polling = {(a, queue_arn) for a in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")}
    made = calls.made | {("sqs:ListQueues", "*")} | polling
    assert {a for a, _ in made} >= {"sns:Publish", "sqs:SendMessage", "sqs:ChangeMessageVisibility"}
    assert _denied(policy, made) == []
    # And nothing of the other queue
    other = f"arn:aws:sqs:{REGION}:{ACCOUNT}:svc-svc_audit"
    beyond = {("sqs:ReceiveMessage", other), ("sqs:SendMessage", other), ("sqs:DeleteMessage", other)}
    assert _denied(policy, beyond) == sorted(beyond)
