"""The template as data: what it makes for a topology, and what it grants. No AWS."""

import re

import pytest

from mailbag.broker import Queue, RetryPolicy, Topology, TopologyError
from mailbag.broker.sqs.mapping import REDRIVE_HEADROOM
from mailbag.deploy.cloudformation import LambdaFunctions, template
from tests.cloudformation.topologies import everything, lambda_ready


def _of_type(t: dict, kind: str) -> dict:
    return {k: r for k, r in t["Resources"].items() if r["Type"] == kind}


def _by_name(t: dict, kind: str, name_key: str) -> dict:
    return {r["Properties"][name_key]: r for r in _of_type(t, kind).values()}


def test_fifo_topics_and_queues_redrive_and_names_follow_the_adapter():
    t = template(everything(), prefix="dev-")
    topics = _by_name(t, "AWS::SNS::Topic", "TopicName")
    assert set(topics) == {"dev-payments.fifo", "dev-orders_created", "dev-announcements"}
    assert topics["dev-payments.fifo"]["Properties"] | {} == {
        "TopicName": "dev-payments.fifo",
        "FifoTopic": True,
        "ContentBasedDeduplication": False,
    }
    queues = _by_name(t, "AWS::SQS::Queue", "QueueName")
    assert set(queues) == {
        "dev-ledger_v1.fifo",
        "dev-ledger_v1_dlq.fifo",
        "dev-audit",
        "dev-audit_dlq",
        "dev-eu_orders",
        "dev-eu-parked",
    }
    ledger = queues["dev-ledger_v1.fifo"]["Properties"]
    assert ledger["FifoQueue"] is True and ledger["ContentBasedDeduplication"] is False
    assert ledger["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["QueueLedgerV1Dlq", "Arn"]},
        "maxReceiveCount": 3 + REDRIVE_HEADROOM,
    }
    assert ledger["Tags"] == [
        {"Key": "mailbag-name", "Value": "ledger.v1"},
        {"Key": "mailbag-topics", "Value": "payments"},  # a plain client's message is of the queue's topic
    ]
    assert queues["dev-audit"]["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 7 + REDRIVE_HEADROOM
    assert queues["dev-eu_orders"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["QueueEuParked", "Arn"]
    }
    dlq = queues["dev-audit_dlq"]["Properties"]
    assert "RedrivePolicy" not in dlq and dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert {q["Properties"]["VisibilityTimeout"] for q in queues.values()} == {30}


def test_subscriptions_are_raw_with_filter_policies_and_wait_for_the_queue_policy():
    t = template(everything())
    subs = _of_type(t, "AWS::SNS::Subscription")
    assert len(subs) == 4
    ledger = subs["SubscriptionLedgerV1Payments"]
    assert ledger["DependsOn"] == "QueuePolicyLedgerV1"
    assert ledger["Properties"] == {
        "TopicArn": {"Ref": "TopicPayments"},
        "Protocol": "sqs",
        "Endpoint": {"Fn::GetAtt": ["QueueLedgerV1", "Arn"]},
        "RawMessageDelivery": True,
        "FilterPolicy": {"currency": ["EUR", "USD"], "priority": ["5", {"numeric": ["=", 5.0]}]},
    }
    assert "FilterPolicy" not in subs["SubscriptionAuditPayments"]["Properties"]


def test_a_queue_policy_admits_only_the_queues_own_topics():
    t = template(everything())
    policies = _of_type(t, "AWS::SQS::QueuePolicy")
    assert set(policies) == {"QueuePolicyLedgerV1", "QueuePolicyAudit", "QueuePolicyEuOrders"}
    audit = policies["QueuePolicyAudit"]["Properties"]
    assert audit["Queues"] == [{"Ref": "QueueAudit"}]
    [statement] = audit["PolicyDocument"]["Statement"]
    assert statement == {
        "Sid": "mailbag-sns",
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": {"Fn::GetAtt": ["QueueAudit", "Arn"]},
        "Condition": {"ArnEquals": {"aws:SourceArn": [{"Ref": "TopicOrdersCreated"}, {"Ref": "TopicPayments"}]}},
    }


def _grants(t: dict, role: str) -> dict[str, set]:
    """action -> the resources (as template references) the role's policy allows it on."""
    [policy] = t["Resources"][role]["Properties"]["Policies"]
    grants: dict[str, set] = {}
    for s in policy["PolicyDocument"]["Statement"]:
        assert s["Effect"] == "Allow"
        for action in s["Action"]:
            grants.setdefault(action, set()).update(str(r) for r in s["Resource"])
    return grants


def _arns(*logical: str) -> set[str]:
    return {str({"Fn::GetAtt": [name, "Arn"]}) for name in logical}


# the adapter looks a queue up by its standard name first: for FIFO queues that name too
PROBED = {
    str({"Fn::Sub": f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{name}"})
    for name in ("ledger_v1", "ledger_v1_dlq")
}


def test_the_worker_role_reaches_only_its_own_queues_and_topics():
    t = template(everything())
    queues = _arns("QueueLedgerV1", "QueueAudit", "QueueEuOrders")
    dead = _arns("QueueLedgerV1Dlq", "QueueAuditDlq", "QueueEuParked")
    topics = {str({"Ref": name}) for name in ("TopicPayments", "TopicOrdersCreated", "TopicAnnouncements")}
    assert _grants(t, "WorkerRole") == {
        "sqs:ListQueues": {"*"},
        "sns:ListTopics": {"*"},
        "sqs:ReceiveMessage": queues,
        "sqs:DeleteMessage": queues,
        "sqs:ChangeMessageVisibility": queues,
        "sqs:SendMessage": queues | dead,
        "sqs:GetQueueAttributes": queues | dead,
        "sqs:ListQueueTags": queues | dead,
        "sqs:GetQueueUrl": queues | dead | PROBED,
        "sns:Publish": topics,
        "sns:ListSubscriptionsByTopic": topics,
        "sns:GetSubscriptionAttributes": {
            str({"Fn::Sub": f"${{{name}}}:*"}) for name in ("TopicPayments", "TopicOrdersCreated", "TopicAnnouncements")
        },
    }
    trust = t["Resources"]["WorkerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {
            "Effect": "Allow",
            "Principal": {"Service": {"Ref": "WorkerServices"}},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
        }
    ]
    assert t["Parameters"]["WorkerServices"]["Default"] == "ecs-tasks.amazonaws.com,lambda.amazonaws.com"


def test_the_replay_role_drains_dead_letters_and_sends_only_to_their_queues():
    t = template(everything())
    queues = _arns("QueueLedgerV1", "QueueAudit", "QueueEuOrders")
    dead = _arns("QueueLedgerV1Dlq", "QueueAuditDlq", "QueueEuParked")
    assert _grants(t, "DeadLetterReplayRole") == {
        "sqs:ListQueues": {"*"},
        "sqs:ReceiveMessage": dead,
        "sqs:DeleteMessage": dead,
        "sqs:ChangeMessageVisibility": dead,
        "sqs:SendMessage": queues,
        "sqs:GetQueueAttributes": queues | dead,
        "sqs:ListQueueTags": queues | dead,
        "sqs:GetQueueUrl": queues | dead | PROBED,
    }


def test_outputs_name_every_topic_arn_queue_url_and_role():
    outputs = template(everything())["Outputs"]
    assert outputs["TopicPaymentsArn"] == {"Description": "ARN of topic payments", "Value": {"Ref": "TopicPayments"}}
    assert outputs["QueueEuParkedUrl"] == {
        "Description": "URL of dead-letter queue eu-parked",
        "Value": {"Ref": "QueueEuParked"},
    }
    assert len([k for k in outputs if k.endswith("Url")]) == 6
    assert outputs["WorkerRoleArn"]["Value"] == {"Fn::GetAtt": ["WorkerRole", "Arn"]}
    assert outputs["DeadLetterReplayRoleArn"]["Value"] == {"Fn::GetAtt": ["DeadLetterReplayRole", "Arn"]}


def test_names_differing_only_in_punctuation_get_distinct_logical_ids():
    t = template(Topology(queues=(Queue("a-b", ("t",)), Queue("ab", ("t",)))))
    queues = _by_name(t, "AWS::SQS::Queue", "QueueName")
    assert {"a-b", "ab", "a-b_dlq", "ab_dlq"} == set(queues)
    assert len(_of_type(t, "AWS::SQS::Queue")) == 4


@pytest.mark.parametrize(
    "topology, options, says",
    [
        (Topology(queues=(Queue("a.b", ("t",)), Queue("a_b", ("t",)))), {}, "map to the same AWS name"),
        (Topology(queues=(Queue("q" * 78, ("t",)),)), {}, "longer than the 80 characters"),
        (Topology(topics=("t",)), {"prefix": "dev."}, "prefix 'dev.' may hold only"),
        (Topology(topics=("t",)), {"visibility": 50_000}, "visibility must be between"),
    ],
)
def test_what_aws_would_refuse_fails_at_export(topology, options, says):
    with pytest.raises((TopologyError, ValueError), match=says):
        template(topology, **options)


def test_dead_letter_queues_are_retained_and_the_others_when_asked():
    # Given the template as exported by default, and with retain_queues
    for retain_queues in (False, True):
        t = template(everything(), retain_queues=retain_queues)
        queues = _by_name(t, "AWS::SQS::Queue", "QueueName")
        # Then a DLQ stays when the stack is deleted or a change replaces it; a queue only when asked
        for name, q in queues.items():
            dead = "RedrivePolicy" not in q["Properties"]
            kept = dead or retain_queues
            assert (q.get("DeletionPolicy"), q.get("UpdateReplacePolicy")) == (
                ("Retain", "Retain") if kept else (None, None)
            ), name


def test_every_role_takes_extra_managed_policies_from_a_parameter():
    t = template(lambda_ready(), functions=LambdaFunctions("svc.aws.handler"))
    roles = _of_type(t, "AWS::IAM::Role")
    assert len(roles) == 2 + 3  # worker, replay, one per function
    for logical, role in roles.items():
        # attached only when the parameter lists some
        arns = role["Properties"]["ManagedPolicyArns"]
        extra = arns["Fn::If"][1]["Ref"]
        assert arns == {"Fn::If": [f"Has{extra}", {"Ref": extra}, {"Ref": "AWS::NoValue"}]}, logical
        assert (t["Parameters"][extra]["Type"], t["Parameters"][extra]["Default"]) == ("CommaDelimitedList", "")
    assert {r["Properties"]["ManagedPolicyArns"]["Fn::If"][1]["Ref"] for r in roles.values()} == {
        "WorkerExtraManagedPolicyArns",
        "ReplayExtraManagedPolicyArns",
        "LambdaExtraManagedPolicyArns",
    }


def test_service_trust_asks_for_the_stacks_own_account():
    t = template(lambda_ready(), functions=LambdaFunctions("svc.aws.handler"))
    for logical, role in _of_type(t, "AWS::IAM::Role").items():
        [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        if "Service" in trust["Principal"]:
            assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}, logical
        else:
            assert logical == "DeadLetterReplayRole" and "Condition" not in trust


def test_lambda_export_adds_a_function_role_log_group_and_trigger_reporting_item_failures_per_queue():
    # Given every queue handled by Lambda functions with a 20 s timeout
    t = template(lambda_ready(), prefix="dev-", functions=LambdaFunctions("svc.aws.handler", timeout=20))
    functions = _of_type(t, "AWS::Lambda::Function")
    triggers = _of_type(t, "AWS::Lambda::EventSourceMapping")
    # Then each queue has one function and one trigger
    assert set(functions) == {"FunctionLedgerV1", "FunctionAudit", "FunctionEuOrders"}
    assert {tr["Properties"]["EventSourceArn"]["Fn::GetAtt"][0] for tr in triggers.values()} == {
        "QueueLedgerV1",
        "QueueAudit",
        "QueueEuOrders",
    }
    # And every trigger reports item failures; FIFO ones take no batching window
    for name, trigger in triggers.items():
        props = trigger["Properties"]
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        fifo = props["EventSourceArn"]["Fn::GetAtt"][0] == "QueueLedgerV1"
        assert ("MaximumBatchingWindowInSeconds" in props) is not fifo
        assert props["BatchSize"] == {"Ref": "LambdaFifoBatchSize" if fifo else "LambdaBatchSize"}
    # And the functions run the handler, from code and runtime the stack is given
    audit = functions["FunctionAudit"]["Properties"]
    assert audit["Handler"] == "svc.aws.handler" and audit["Timeout"] == 20
    assert audit["Runtime"] == {"Ref": "LambdaRuntime"}
    assert audit["Code"] == {"S3Bucket": {"Ref": "LambdaCodeS3Bucket"}, "S3Key": {"Ref": "LambdaCodeS3Key"}}
    assert audit["Environment"]["Variables"] == {
        "MAILBAG_BROKER_URL": {"Fn::Sub": "sqs://?region=${AWS::Region}&prefix=dev-"},
        "MAILBAG_IDEMPOTENCY_URL": {"Ref": "IdempotencyUrl"},
    }
    # And the queues hide a received record for 6 x the timeout; the window fits in what is left
    queues = _by_name(t, "AWS::SQS::Queue", "QueueName")
    assert {q["Properties"]["VisibilityTimeout"] for q in queues.values()} == {120}
    assert t["Parameters"]["LambdaBatchingWindow"]["MaxValue"] == 0
    roomy = template(lambda_ready(), visibility=150, functions=LambdaFunctions("svc.aws.handler", timeout=20))
    assert roomy["Parameters"]["LambdaBatchingWindow"]["MaxValue"] == 30


def test_a_functions_role_reaches_its_own_queue_and_dlq_and_writes_its_own_log_group():
    t = template(lambda_ready(), functions=LambdaFunctions("svc.aws.handler", queues=("audit",)))
    assert set(_of_type(t, "AWS::Lambda::Function")) == {"FunctionAudit"}
    grants = _grants(t, "FunctionRoleAudit")
    queue, dead = _arns("QueueAudit"), _arns("QueueAuditDlq")
    assert grants["sqs:ReceiveMessage"] == grants["sqs:DeleteMessage"] == queue
    assert grants["sqs:SendMessage"] == queue | dead
    assert "sqs:GetQueueUrl" in grants and grants["sqs:GetQueueUrl"] == queue | dead
    assert t["Resources"]["FunctionAudit"]["Properties"]["Role"] == {"Fn::GetAtt": ["FunctionRoleAudit", "Arn"]}
    [logs] = _of_type(t, "AWS::IAM::Policy").values()
    assert logs["Properties"]["Roles"] == [{"Ref": "FunctionRoleAudit"}]
    [statement] = logs["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statement["Resource"] == [{"Fn::GetAtt": ["LogGroupAudit", "Arn"]}]
    assert t["Resources"]["LogGroupAudit"]["Properties"]["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${FunctionAudit}"}


def test_an_app_whose_handlers_keep_no_idempotency_records_is_not_asked_for_a_store():
    t = template(lambda_ready(), functions=LambdaFunctions("svc.aws.handler", idempotency=False))
    assert "IdempotencyUrl" not in t["Parameters"]
    assert "MAILBAG_IDEMPOTENCY_URL" not in t["Resources"]["FunctionAudit"]["Properties"]["Environment"]["Variables"]


@pytest.mark.parametrize(
    "topology, options, says",
    [
        (
            lambda_ready(),
            {"visibility": 179, "functions": LambdaFunctions("svc.aws.handler")},
            "visibility 179s is below 6 x the Lambda timeout (180s)",
        ),
        (lambda_ready(), {"functions": LambdaFunctions("svc.aws.handler", queues=("nope",))}, "no queue 'nope'"),
    ],
)
def test_a_lambda_trigger_that_would_break_aws_rules_is_refused(topology, options, says):
    with pytest.raises(TopologyError, match=re.escape(says)):
        template(topology, **options)


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"handler": "handler"}, "module.attribute"),
        ({"handler": "svc:app"}, "module.attribute"),
        ({"handler": "svc.aws.handler", "timeout": 901}, "between 1 and 900"),
    ],
)
def test_bad_lambda_options_are_refused(fields, says):
    with pytest.raises(ValueError, match=says):
        LambdaFunctions(**fields)


def _attempts(n: int) -> Topology:
    return Topology(queues=(Queue("q", ("t",), retry=RetryPolicy(max_attempts=n)),))


@pytest.mark.parametrize("attempts", [1, 4])
def test_a_lambda_triggered_queue_of_fewer_than_five_attempts_is_refused(attempts):
    # Given a queue that gives up after fewer attempts than AWS's 5 receives for a trigger
    # (on Lambda each receive is an attempt, throttled receives too)
    # Then exporting it with a Lambda trigger is refused, naming the queue and the fix
    says = f"queue 'q' dead-letters after {attempts} attempt(s), below the 5 receives a Lambda trigger needs"
    with pytest.raises(TopologyError, match=re.escape(says)):
        template(_attempts(attempts), functions=LambdaFunctions("svc.aws.handler"))
    # and without a trigger the same queue exports, its redrive above its attempts
    [queue] = [r for r in template(_attempts(attempts))["Resources"].values() if r["Properties"].get("RedrivePolicy")]
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == attempts + REDRIVE_HEADROOM


def test_a_lambda_triggered_queue_of_five_attempts_redrives_after_the_headroom():
    t = template(_attempts(5), functions=LambdaFunctions("svc.aws.handler"))
    [queue] = [r for r in t["Resources"].values() if r["Properties"].get("RedrivePolicy")]
    assert queue["Properties"]["RedrivePolicy"]["maxReceiveCount"] == 5 + REDRIVE_HEADROOM == 55
