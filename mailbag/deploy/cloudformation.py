"""A `Topology` as an AWS CloudFormation template, for teams that deploy their SNS/SQS
resources as infrastructure rather than letting workers create them.

The template makes what `mailbag.broker.sqs.topology` would (names, attributes, redrive,
raw subscriptions with filter policies, queue policies admitting only their topics:
both take them from `mailbag.broker.sqs.mapping`) and adds two IAM roles: one for workers,
limited to their own queues and topics, and one for replaying dead letters. A broker
opened with the same `prefix` finds everything by name. Building it calls no AWS API.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from mailbag.broker.sqs.mapping import (
    QUEUE_NAME_MAX,
    SQS_MAX_BYTES,
    TOPIC_NAME_MAX,
    admit_topics_statement,
    aws_name,
    check_collisions,
    check_prefix,
    fifo_topics,
    queue_attributes,
    queue_tags,
    redrive_policy,
    subscription_attributes,
    topic_attributes,
)
from mailbag.broker.topology import Topology

DEFAULT_VISIBILITY = 30
#: who may assume the worker role unless the stack says otherwise: ECS tasks and Lambda
WORKER_SERVICES = ("ecs-tasks.amazonaws.com", "lambda.amazonaws.com")
_POLICY_VERSION = "2012-10-17"
_WORD = re.compile(r"[^A-Za-z0-9]+")

# What the adapter calls, as IAM actions (a *Batch call needs the action it batches):
# consuming receives, deletes on ack, changes visibility on retry, heartbeat and close,
# reads attributes to find the DLQ and count, and sends to its DLQ and (postponing) to
# itself. A starting worker declares its topology, which on a deployed one only reads:
# queue attributes, and its topics' subscriptions. Listing has no resource to scope
# to: opening a broker lists queues, and publishing finds a topic's ARN by listing.
_CONSUME = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:SendMessage",
]
_LOOK_UP = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
_SEND = ["sqs:SendMessage", *_LOOK_UP]
_DRAIN = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    *_LOOK_UP,
]


def template(topology: Topology, *, prefix: str = "", visibility: int = DEFAULT_VISIBILITY) -> dict[str, Any]:
    """The CloudFormation template (as a dict, ready for `json.dumps`) for `topology`
    under `prefix`, with queues hiding a received message for `visibility` seconds.
    Raises `TopologyError` for names AWS would refuse and `ValueError` for bad options."""
    check_prefix(prefix)
    if not 0 <= visibility <= 43_200:
        raise ValueError(f"visibility must be between 0 and 43200 seconds, got {visibility}")
    check_collisions(topology, prefix)
    return _Builder(topology, prefix, visibility).build()


class _Builder:
    def __init__(self, topology: Topology, prefix: str, visibility: int) -> None:
        self.topology = topology
        self.prefix = prefix
        self.visibility = visibility
        self.resources: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self._ids: dict[str, str] = {}
        #: ARNs of the standard names of FIFO queues, which the adapter tries first
        self._probed: list[Any] = []

    def build(self) -> dict[str, Any]:
        fifo = fifo_topics(self.topology)
        topics = {t: self._topic(t, t in fifo) for t in self.topology.topics}
        queues: list[str] = []
        dead_letters: list[str] = []
        for spec in self.topology.queues:
            dlq = self._queue(spec.dead_letter_queue, spec.ordered, None)
            queue = self._queue(spec.name, spec.ordered, redrive_policy(_arn(dlq), spec), spec.topics)
            queues.append(queue)
            dead_letters.append(dlq)
            if not spec.subscriptions:
                continue
            policy = self._id("QueuePolicy", spec.name)
            # in the adapter's order: ARNs sorted, which differ only in the topic's name
            admitted = sorted(spec.topics, key=lambda t: aws_name(self.prefix, t, t in fifo, TOPIC_NAME_MAX))
            self.resources[policy] = {
                "Type": "AWS::SQS::QueuePolicy",
                "Properties": {
                    "Queues": [{"Ref": queue}],
                    "PolicyDocument": {
                        "Version": _POLICY_VERSION,
                        "Statement": [admit_topics_statement(_arn(queue), [{"Ref": topics[t]} for t in admitted])],
                    },
                },
            }
            for sub in spec.subscriptions:
                self.resources[self._id("Subscription", f"{spec.name} {sub.topic}")] = {
                    "Type": "AWS::SNS::Subscription",
                    # SNS delivers only once the queue admits the topic
                    "DependsOn": policy,
                    "Properties": {
                        "TopicArn": {"Ref": topics[sub.topic]},
                        "Protocol": "sqs",
                        "Endpoint": _arn(queue),
                        **subscription_attributes(sub),
                    },
                }
        self._roles(list(topics.values()), queues, dead_letters)
        return {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": (
                f"mailbag topology: {len(topics)} SNS topic(s), {len(queues)} SQS queue(s) with dead-letter "
                f"queues, and IAM roles for workers and dead-letter replay (name prefix {self.prefix!r})"
            ),
            "Parameters": {
                "WorkerServices": {
                    "Type": "CommaDelimitedList",
                    "Default": ",".join(WORKER_SERVICES),
                    "Description": "AWS services that may assume the worker role",
                },
                "ReplayPrincipal": {
                    "Type": "String",
                    "Default": "",
                    "Description": "ARN of the IAM principal that may assume the dead-letter replay role "
                    "(empty: any principal of this account that IAM allows to)",
                },
            },
            "Conditions": {"ReplayByAccount": {"Fn::Equals": [{"Ref": "ReplayPrincipal"}, ""]}},
            "Resources": self.resources,
            "Outputs": self.outputs,
        }

    def _topic(self, name: str, fifo: bool) -> str:
        logical = self._id("Topic", name)
        self.resources[logical] = {
            "Type": "AWS::SNS::Topic",
            "Properties": {"TopicName": aws_name(self.prefix, name, fifo, TOPIC_NAME_MAX), **topic_attributes(fifo)},
        }
        self.outputs[f"{logical}Arn"] = {"Description": f"ARN of topic {name}", "Value": {"Ref": logical}}
        return logical

    def _queue(self, name: str, fifo: bool, redrive: dict[str, Any] | None, topics: tuple[str, ...] = ()) -> str:
        logical = self._id("Queue", name)
        if fifo:
            standard = aws_name(self.prefix, name, False, QUEUE_NAME_MAX)
            self._probed.append(
                {"Fn::Sub": f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{standard}"}
            )
        attributes = queue_attributes(
            fifo=fifo, visibility=self.visibility, max_message_bytes=SQS_MAX_BYTES, redrive=redrive
        )
        self.resources[logical] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": aws_name(self.prefix, name, fifo, QUEUE_NAME_MAX),
                **attributes,
                "Tags": [{"Key": key, "Value": value} for key, value in queue_tags(name, topics).items()],
            },
        }
        kind = "dead-letter queue" if redrive is None else "queue"
        self.outputs[f"{logical}Url"] = {"Description": f"URL of {kind} {name}", "Value": {"Ref": logical}}
        return logical

    def _roles(self, topics: list[str], queues: list[str], dead_letters: list[str]) -> None:
        # listing names no resource, so IAM grants it on "*" only
        worker = [_allow(["sqs:ListQueues", "sns:ListTopics"], ["*"])]
        if queues:
            worker.append(_allow(_CONSUME, [_arn(q) for q in queues]))
            worker.append(_allow(_SEND, [_arn(q) for q in dead_letters]))
        if topics:
            worker.append(_allow(["sns:Publish", "sns:ListSubscriptionsByTopic"], [{"Ref": t} for t in topics]))
            worker.append(_allow(["sns:GetSubscriptionAttributes"], [{"Fn::Sub": f"${{{t}}}:*"} for t in topics]))
        replay = [_allow(["sqs:ListQueues"], ["*"])]
        if queues:
            replay.append(_allow(_DRAIN, [_arn(q) for q in dead_letters]))
            replay.append(_allow(_SEND, [_arn(q) for q in queues]))
        if self._probed:
            # the adapter finds a queue by its standard name, then its `.fifo` one; AWS
            # may answer a name the caller cannot look up with AccessDenied, not "no such queue"
            probe = _allow(["sqs:GetQueueUrl"], self._probed)
            worker.append(probe)
            replay.append(probe)
        self._role(
            "WorkerRole",
            "Runs mailbag workers: consumes its queues, dead-letters, publishes on its topics",
            {"Service": {"Ref": "WorkerServices"}},
            worker,
        )
        self._role(
            "DeadLetterReplayRole",
            "Inspects, replays and purges mailbag dead letters",
            {
                "AWS": {
                    "Fn::If": [
                        "ReplayByAccount",
                        {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"},
                        {"Ref": "ReplayPrincipal"},
                    ]
                }
            },
            replay,
        )

    def _role(self, logical: str, description: str, principal: dict[str, Any], statements: list[dict]) -> None:
        self.resources[logical] = {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": description,
                "AssumeRolePolicyDocument": {
                    "Version": _POLICY_VERSION,
                    "Statement": [{"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}],
                },
                "Policies": [
                    {
                        "PolicyName": "mailbag",
                        "PolicyDocument": {"Version": _POLICY_VERSION, "Statement": statements},
                    }
                ],
            },
        }
        self.outputs[f"{logical}Arn"] = {"Description": description, "Value": {"Fn::GetAtt": [logical, "Arn"]}}

    def _id(self, kind: str, name: str) -> str:
        """A logical id (letters and digits only) from one of our names; made unique by
        a digest of the name where two names differ only in punctuation or case."""
        logical = kind + "".join(w[:1].upper() + w[1:] for w in _WORD.split(name))
        if logical.lower() in self._ids and self._ids[logical.lower()] != name:
            logical += hashlib.sha256(name.encode()).hexdigest()[:8]
        self._ids[logical.lower()] = name
        return logical


def _arn(logical: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [logical, "Arn"]}


def _allow(actions: list[str], resources: list[Any]) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resources}
