"""A `Topology` as an AWS CloudFormation template, for teams that deploy their SNS/SQS
resources as infrastructure rather than letting workers create them.

The template makes what `mailbag.broker.sqs.topology` would (names, attributes, redrive,
raw subscriptions with filter policies, queue policies admitting only their topics:
both take them from `mailbag.broker.sqs.mapping`) and adds IAM roles: one for workers,
limited to their own queues and topics, and one for replaying dead letters. A broker
opened with the same `prefix` finds everything by name. Building it calls no AWS API.

With `LambdaFunctions`, each queue a Lambda function handles also gets the function,
a role of its own (the worker's grants on that queue alone, plus its log group) and the
event source mapping with `ReportBatchItemFailures`; the export refuses a queue whose
visibility or redrive would make the trigger lose or churn messages (see `LAMBDA_RULES`).

Hygiene: dead-letter queues are kept when the stack is deleted or a change replaces
them (`DeletionPolicy`/`UpdateReplacePolicy: Retain`; the other queues too with
`retain_queues`); every role trusting an AWS service asks for `aws:SourceAccount` = the
stack's account; each role takes extra managed policies from a parameter, so nothing is
attached by hand. There is one worker role per template, that is per app: one
`mailbag worker` runs all of an app's queues in one process, under one task role. A
service that must hold fewer rights is an app of its own; on Lambda, each function's
role already reaches its own queue only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from mailbag.broker.errors import TopologyError
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
from mailbag.broker.topology import Queue, Topology

DEFAULT_VISIBILITY = 30
#: who may assume the worker role unless the stack says otherwise: ECS tasks and Lambda
WORKER_SERVICES = ("ecs-tasks.amazonaws.com", "lambda.amazonaws.com")
#: AWS's rules for an SQS queue that triggers a Lambda function: a visibility timeout of
#: at least this many times the function's timeout (plus the batching window), and at
#: least this many receives before giving up, since throttled receives count too. The
#: redrive's maxReceiveCount is far above it (max attempts + `REDRIVE_HEADROOM`), but
#: mailbag gives up after max attempts, and on Lambda each receive is an attempt.
LAMBDA_VISIBILITY_FACTOR = 6
LAMBDA_MIN_ATTEMPTS = 5
#: the Lambda runtimes a function may use (mailbag needs Python 3.11 or newer)
LAMBDA_RUNTIMES = ("python3.11", "python3.12", "python3.13")
#: the largest template CloudFormation takes inline (`--template-file` without
#: `--s3-bucket`); a larger one, up to 1 MB, must be uploaded to S3 first
INLINE_TEMPLATE_MAX = 51_200
_MAX_BATCHING_WINDOW = 300
_POLICY_VERSION = "2012-10-17"
_WORD = re.compile(r"[^A-Za-z0-9]+")
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}

# What the adapter calls, as IAM actions (a *Batch call needs the action it batches):
# consuming receives, deletes on ack, changes visibility on retry, heartbeat and close,
# reads attributes (and tags: a queue's topics) to find the DLQ and count, and sends to
# its DLQ and (postponing) to itself. A starting worker declares its topology, which on a deployed one only reads:
# queue attributes, and its topics' subscriptions. Listing has no resource to scope
# to: opening a broker lists queues, and publishing finds a topic's ARN by listing.
_CONSUME = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:ListQueueTags",
    "sqs:SendMessage",
]
_LOOK_UP = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListQueueTags"]
_SEND = ["sqs:SendMessage", *_LOOK_UP]
_DRAIN = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    *_LOOK_UP,
]


@dataclass(frozen=True)
class LambdaFunctions:
    """Lambda functions that run an app's handlers on SQS triggers, one per queue.
    `handler` is the function handler, `module.attribute` naming what
    `mailbag.workers.aws_lambda.handler_for(app)` made; `queues` are the queues they
    handle (empty: all of the topology's); `timeout` is the functions' timeout in
    seconds; `idempotency` says whether the app's handlers need a shared idempotency
    store (the stack then asks for its URL)."""

    handler: str
    queues: tuple[str, ...] = ()
    timeout: int = 30
    idempotency: bool = True

    def __post_init__(self) -> None:
        if not _HANDLER.match(self.handler):
            raise ValueError(f"the Lambda handler must read module.attribute, got {self.handler!r}")
        if not 1 <= self.timeout <= 900:
            raise ValueError(f"the Lambda timeout must be between 1 and 900 seconds, got {self.timeout}")

    def min_visibility(self) -> int:
        """The least queue visibility timeout AWS advises for these functions' queues."""
        return LAMBDA_VISIBILITY_FACTOR * self.timeout


def template(
    topology: Topology,
    *,
    prefix: str = "",
    visibility: int | None = None,
    functions: LambdaFunctions | None = None,
    retain_queues: bool = False,
) -> dict[str, Any]:
    """The CloudFormation template (as a dict, ready for `json.dumps`) for `topology`
    under `prefix`, with queues hiding a received message for `visibility` seconds
    (default 30, or 6 x the functions' timeout with `functions`). Dead-letter queues are
    retained when the stack goes, and the other queues too with `retain_queues`.
    Raises `TopologyError` for names AWS would refuse and for a Lambda trigger that
    would break AWS's rules, `ValueError` for bad options."""
    check_prefix(prefix)
    if visibility is None:
        visibility = DEFAULT_VISIBILITY if functions is None else max(DEFAULT_VISIBILITY, functions.min_visibility())
    if not 0 <= visibility <= 43_200:
        raise ValueError(f"visibility must be between 0 and 43200 seconds, got {visibility}")
    check_collisions(topology, prefix)
    handled = _check_lambda(topology, visibility, functions) if functions is not None else []
    return _Builder(topology, prefix, visibility, retain_queues).build(functions, handled)


def _check_lambda(topology: Topology, visibility: int, functions: LambdaFunctions) -> list[Queue]:
    """The queues the functions handle, once each passes AWS's rules for a trigger."""
    known = {q.name: q for q in topology.queues}
    unknown = [name for name in functions.queues if name not in known]
    if unknown:
        raise TopologyError(f"no queue {unknown[0]!r} to give a Lambda trigger; the app has {', '.join(known)}")
    if not known:
        raise TopologyError("the app has no queue for a Lambda function to handle")
    if visibility < functions.min_visibility():
        raise TopologyError(
            f"visibility {visibility}s is below {LAMBDA_VISIBILITY_FACTOR} x the Lambda timeout "
            f"({functions.min_visibility()}s), so SQS would deliver a record again while its invocation runs: "
            f"export with --visibility {functions.min_visibility()} or more"
        )
    handled = [known[name] for name in functions.queues] if functions.queues else list(known.values())
    for spec in handled:
        if spec.retry.max_attempts < LAMBDA_MIN_ATTEMPTS:
            raise TopologyError(
                f"queue {spec.name!r} dead-letters after {spec.retry.max_attempts} attempt(s), below the "
                f"{LAMBDA_MIN_ATTEMPTS} receives a Lambda trigger needs (each receive is an attempt, throttled "
                f"ones too): give its handlers RetryPolicy(max_attempts={LAMBDA_MIN_ATTEMPTS}) or more"
            )
    return handled


class _Builder:
    def __init__(self, topology: Topology, prefix: str, visibility: int, retain_queues: bool) -> None:
        self.topology = topology
        self.prefix = prefix
        self.visibility = visibility
        self.retain_queues = retain_queues
        self.resources: dict[str, Any] = {}
        self.outputs: dict[str, Any] = {}
        self.parameters: dict[str, Any] = {}
        self.conditions: dict[str, Any] = {}
        self._ids: dict[str, str] = {}
        #: queue logical id -> the ARN of its standard name, for FIFO queues, which the
        #: adapter tries first
        self._probed: dict[str, Any] = {}

    def build(self, functions: LambdaFunctions | None, handled: list[Queue]) -> dict[str, Any]:
        fifo = fifo_topics(self.topology)
        topics = {t: self._topic(t, t in fifo) for t in self.topology.topics}
        queues: list[str] = []
        dead_letters: list[str] = []
        #: our queue name -> (its logical id, its dead-letter queue's)
        logical: dict[str, tuple[str, str]] = {}
        for spec in self.topology.queues:
            dlq = self._queue(spec.dead_letter_queue, spec.ordered, None)
            queue = self._queue(spec.name, spec.ordered, redrive_policy(_arn(dlq), spec), spec.topics)
            queues.append(queue)
            dead_letters.append(dlq)
            logical[spec.name] = (queue, dlq)
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
        self.parameters["WorkerServices"] = {
            "Type": "CommaDelimitedList",
            "Default": ",".join(WORKER_SERVICES),
            "Description": "AWS services that may assume the worker role",
        }
        self.parameters["ReplayPrincipal"] = {
            "Type": "String",
            "Default": "",
            "Description": "ARN of the IAM principal that may assume the dead-letter replay role "
            "(empty: any principal of this account that IAM allows to)",
        }
        self.conditions["ReplayByAccount"] = {"Fn::Equals": [{"Ref": "ReplayPrincipal"}, ""]}
        topic_ids = list(topics.values())
        self._roles(topic_ids, queues, dead_letters)
        if functions is not None:
            self._lambda_parameters(functions, handled)
            for spec in handled:
                self._function(functions, spec, *logical[spec.name], topic_ids)
        described = f"{len(handled)} Lambda function(s) with their triggers, " if handled else ""
        return {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": (
                f"mailbag topology: {len(topics)} SNS topic(s), {len(queues)} SQS queue(s) with dead-letter "
                f"queues, {described}and IAM roles for workers and dead-letter replay (name prefix {self.prefix!r})"
            ),
            "Parameters": self.parameters,
            "Conditions": self.conditions,
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
            self._probed[logical] = {
                "Fn::Sub": f"arn:${{AWS::Partition}}:sqs:${{AWS::Region}}:${{AWS::AccountId}}:{standard}"
            }
        attributes = queue_attributes(
            fifo=fifo, visibility=self.visibility, max_message_bytes=SQS_MAX_BYTES, redrive=redrive
        )
        # dead letters outlive the stack: deleting it must not destroy them
        retain = _RETAIN if redrive is None or self.retain_queues else {}
        self.resources[logical] = {
            "Type": "AWS::SQS::Queue",
            **retain,
            "Properties": {
                "QueueName": aws_name(self.prefix, name, fifo, QUEUE_NAME_MAX),
                **attributes,
                "Tags": [{"Key": key, "Value": value} for key, value in queue_tags(name, topics).items()],
            },
        }
        kind = "dead-letter queue" if redrive is None else "queue"
        self.outputs[f"{logical}Url"] = {"Description": f"URL of {kind} {name}", "Value": {"Ref": logical}}
        return logical

    def _worker_grants(self, topics: list[str], queues: list[str], dead_letters: list[str]) -> list[dict[str, Any]]:
        """What a worker on `queues` calls: consume them, send to their dead-letter
        queues, publish on `topics` (and read their subscriptions, which a starting
        worker checks)."""
        # listing names no resource, so IAM grants it on "*" only
        grants = [_allow(["sqs:ListQueues", "sns:ListTopics"], ["*"])]
        if queues:
            grants.append(_allow(_CONSUME, [_arn(q) for q in queues]))
            grants.append(_allow(_SEND, [_arn(q) for q in dead_letters]))
        if topics:
            grants.append(_allow(["sns:Publish", "sns:ListSubscriptionsByTopic"], [{"Ref": t} for t in topics]))
            grants.append(_allow(["sns:GetSubscriptionAttributes"], [{"Fn::Sub": f"${{{t}}}:*"} for t in topics]))
        grants.extend(self._probes(queues + dead_letters))
        return grants

    def _probes(self, queues: list[str]) -> list[dict[str, Any]]:
        """The adapter finds a queue by its standard name, then its `.fifo` one; AWS may
        answer a name the caller cannot look up with AccessDenied, not "no such queue"."""
        probed = [self._probed[q] for q in queues if q in self._probed]
        return [_allow(["sqs:GetQueueUrl"], probed)] if probed else []

    def _roles(self, topics: list[str], queues: list[str], dead_letters: list[str]) -> None:
        replay = [_allow(["sqs:ListQueues"], ["*"])]
        if queues:
            replay.append(_allow(_DRAIN, [_arn(q) for q in dead_letters]))
            replay.append(_allow(_SEND, [_arn(q) for q in queues]))
        replay.extend(self._probes(queues + dead_letters))
        self._role(
            "WorkerRole",
            "Runs mailbag workers: consumes its queues, dead-letters, publishes on its topics",
            {"Service": {"Ref": "WorkerServices"}},
            self._worker_grants(topics, queues, dead_letters),
            extra="WorkerExtraManagedPolicyArns",
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
            extra="ReplayExtraManagedPolicyArns",
        )

    def _role(
        self,
        logical: str,
        description: str,
        principal: dict[str, Any],
        statements: list[dict[str, Any]],
        *,
        extra: str,
        output: bool = True,
    ) -> None:
        """An IAM role with `statements` as its own policy, and the managed policies the
        parameter `extra` lists (made once, shared by the roles that name it)."""
        trust: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": "sts:AssumeRole"}
        if "Service" in principal:  # a service assumes it only on behalf of this account
            trust["Condition"] = {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
        if extra not in self.parameters:
            self.parameters[extra] = {
                "Type": "CommaDelimitedList",
                "Default": "",
                "Description": f"ARNs of managed policies to attach to {logical.removesuffix('Role')} roles as well "
                "(e.g. access to the idempotency table); empty: none",
            }
            self.conditions[f"Has{extra}"] = {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": extra}]}, ""]}]}
        self.resources[logical] = {
            "Type": "AWS::IAM::Role",
            "Properties": {
                "Description": description,
                "AssumeRolePolicyDocument": {"Version": _POLICY_VERSION, "Statement": [trust]},
                "ManagedPolicyArns": {"Fn::If": [f"Has{extra}", {"Ref": extra}, {"Ref": "AWS::NoValue"}]},
                "Policies": [
                    {
                        "PolicyName": "mailbag",
                        "PolicyDocument": {"Version": _POLICY_VERSION, "Statement": statements},
                    }
                ],
            },
        }
        if output:
            self.outputs[f"{logical}Arn"] = {"Description": description, "Value": {"Fn::GetAtt": [logical, "Arn"]}}

    def _lambda_parameters(self, functions: LambdaFunctions, handled: list[Queue]) -> None:
        window = min(_MAX_BATCHING_WINDOW, self.visibility - functions.min_visibility())
        self.parameters |= {
            "LambdaCodeS3Bucket": {
                "Type": "String",
                "MinLength": 3,
                "Description": "S3 bucket holding the functions' deployment package (your code and mailbag)",
            },
            "LambdaCodeS3Key": {
                "Type": "String",
                "MinLength": 1,
                "Description": "S3 key of the functions' deployment package (.zip)",
            },
            "LambdaRuntime": {
                "Type": "String",
                "Default": "python3.12",
                "AllowedValues": list(LAMBDA_RUNTIMES),
                "Description": "Python runtime of the functions",
            },
            "LambdaMemorySize": {
                "Type": "Number",
                "Default": 512,
                "MinValue": 128,
                "MaxValue": 10240,
                "Description": "memory of each function, in MB",
            },
        }
        if any(not q.ordered for q in handled):
            self.parameters["LambdaBatchSize"] = {
                "Type": "Number",
                "Default": 10,
                "MinValue": 1,
                "MaxValue": 10000,
                "Description": "records per invocation on standard queues (above 10 needs a batching window >= 1)",
            }
            self.parameters["LambdaBatchingWindow"] = {
                "Type": "Number",
                "Default": 0,
                "MinValue": 0,
                "MaxValue": window,
                "Description": f"seconds Lambda gathers records before invoking, on standard queues (at most "
                f"{window}: the queues' visibility {self.visibility}s must stay >= "
                f"{LAMBDA_VISIBILITY_FACTOR} x the timeout + the window)",
            }
        if any(q.ordered for q in handled):
            self.parameters["LambdaFifoBatchSize"] = {
                "Type": "Number",
                "Default": 10,
                "MinValue": 1,
                "MaxValue": 10,
                "Description": "records per invocation on FIFO queues",
            }
        if functions.idempotency:
            self.parameters["IdempotencyUrl"] = {
                "Type": "String",
                "AllowedPattern": "^(dynamodb|redis|rediss|postgres|postgresql)://.+$",
                "Description": "idempotency store every function instance shares (MAILBAG_IDEMPOTENCY_URL), "
                "e.g. dynamodb://TABLE?region=eu-west-1; grant its access through LambdaExtraManagedPolicyArns",
            }

    def _function(self, functions: LambdaFunctions, spec: Queue, queue: str, dlq: str, topics: list[str]) -> None:
        """The function for one queue: its role, its log group, and its trigger."""
        function, role = self._id("Function", spec.name), self._id("FunctionRole", spec.name)
        self._role(
            role,
            f"Runs the mailbag Lambda function of queue {spec.name}",
            {"Service": "lambda.amazonaws.com"},
            self._worker_grants(topics, [queue], [dlq]),
            extra="LambdaExtraManagedPolicyArns",
            output=False,
        )
        environment = {"MAILBAG_BROKER_URL": {"Fn::Sub": f"sqs://?region=${{AWS::Region}}&prefix={self.prefix}"}}
        if functions.idempotency:
            environment["MAILBAG_IDEMPOTENCY_URL"] = {"Ref": "IdempotencyUrl"}
        self.resources[function] = {
            "Type": "AWS::Lambda::Function",
            "Properties": {
                "Description": f"mailbag handlers of queue {spec.name}",
                "Handler": functions.handler,
                "Runtime": {"Ref": "LambdaRuntime"},
                "Code": {"S3Bucket": {"Ref": "LambdaCodeS3Bucket"}, "S3Key": {"Ref": "LambdaCodeS3Key"}},
                "Role": {"Fn::GetAtt": [role, "Arn"]},
                "Timeout": functions.timeout,
                "MemorySize": {"Ref": "LambdaMemorySize"},
                "Environment": {"Variables": environment},
            },
        }
        # the log group is the stack's, so the role writes to it alone and needs no CreateLogGroup
        logs = self._id("LogGroup", spec.name)
        self.resources[logs] = {
            "Type": "AWS::Logs::LogGroup",
            "Properties": {"LogGroupName": {"Fn::Sub": f"/aws/lambda/${{{function}}}"}, "RetentionInDays": 30},
        }
        self.resources[self._id("LogPolicy", spec.name)] = {
            "Type": "AWS::IAM::Policy",
            "Properties": {
                "PolicyName": "logs",
                "Roles": [{"Ref": role}],
                "PolicyDocument": {
                    "Version": _POLICY_VERSION,
                    "Statement": [_allow(["logs:CreateLogStream", "logs:PutLogEvents"], [_arn(logs)])],
                },
            },
        }
        trigger: dict[str, Any] = {
            "EventSourceArn": _arn(queue),
            "FunctionName": {"Ref": function},
            "Enabled": True,
            # without it Lambda takes a normal answer for "the whole batch succeeded" and
            # deletes every record, the ones mailbag reported as failed included
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
        }
        if spec.ordered:  # FIFO triggers take no batching window
            trigger["BatchSize"] = {"Ref": "LambdaFifoBatchSize"}
        else:
            trigger["BatchSize"] = {"Ref": "LambdaBatchSize"}
            trigger["MaximumBatchingWindowInSeconds"] = {"Ref": "LambdaBatchingWindow"}
        self.resources[self._id("Trigger", spec.name)] = {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": trigger,
        }
        self.outputs[f"{function}Arn"] = {
            "Description": f"ARN of the Lambda function of queue {spec.name}",
            "Value": {"Fn::GetAtt": [function, "Arn"]},
        }

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
