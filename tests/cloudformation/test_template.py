"""The template as data: what it makes for a topology, and what it grants. No AWS."""

import pytest

from mailbag.broker import Queue, Topology, TopologyError
from mailbag.broker.sqs.mapping import REDRIVE_HEADROOM
from mailbag.deploy.cloudformation import template
from tests.cloudformation.topologies import everything


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
    assert ledger["Tags"] == [{"Key": "mailbag-name", "Value": "ledger.v1"}]
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
        "sqs:GetQueueUrl": queues | dead | PROBED,
        "sns:Publish": topics,
        "sns:ListSubscriptionsByTopic": topics,
        "sns:GetSubscriptionAttributes": {
            str({"Fn::Sub": f"${{{name}}}:*"}) for name in ("TopicPayments", "TopicOrdersCreated", "TopicAnnouncements")
        },
    }
    trust = t["Resources"]["WorkerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [
        {"Effect": "Allow", "Principal": {"Service": {"Ref": "WorkerServices"}}, "Action": "sts:AssumeRole"}
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
