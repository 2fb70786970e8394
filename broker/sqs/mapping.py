"""How a `Topology` maps onto SNS and SQS: names, attributes, filter and queue
policies, as plain data. `mailbag.broker.sqs.topology` applies it through the AWS APIs and
`mailbag.deploy.cloudformation` writes it as a template, so both make the same resources.
No AWS calls here, and no boto3.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mailbag.broker.errors import TopologyError
from mailbag.broker.topology import Queue, Subscription, Topology

NAME_TAG = "mailbag-name"
#: the topics a queue is subscribed to, space-separated: the topic of a plain client's
#: message sent straight to a queue of one topic
TOPICS_TAG = "mailbag-topics"
#: longest tag value AWS takes
TAG_VALUE_MAX = 256
POLICY_SID = "mailbag-sns"
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
#: largest message an SQS queue takes; queues are created with this MaximumMessageSize
SQS_MAX_BYTES = 1_048_576
QUEUE_NAME_MAX = 80
#: longest `DelaySeconds` SQS allows
MAX_DELAY_SECONDS = 900
#: longest visibility timeout SQS allows (12 hours)
MAX_VISIBILITY = 43_200
TOPIC_NAME_MAX = 256
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]*$")
_NUMBER = re.compile(r"^-?\d{1,15}(\.\d{1,5})?$")


def aws_name(prefix: str, name: str, fifo: bool, limit: int = QUEUE_NAME_MAX) -> str:
    """The SNS or SQS name of one of ours: prefix, dots as '_', `.fifo` where FIFO."""
    full = prefix + name.replace(".", "_") + (".fifo" if fifo else "")
    if len(full) > limit:
        raise TopologyError(f"{name!r} becomes {full!r}, longer than the {limit} characters AWS allows")
    return full


def queue_tags(name: str, topics: tuple[str, ...]) -> dict[str, str]:
    """Tags of one of our queues: its name, and its topics (when they fit in a tag)."""
    tags = {NAME_TAG: name}
    listed = " ".join(topics)
    if listed and len(listed) <= TAG_VALUE_MAX:
        tags[TOPICS_TAG] = listed
    return tags


def check_prefix(prefix: str) -> None:
    """A name prefix AWS accepts in every topic and queue name."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix {prefix!r} may hold only letters, digits, '-' and '_'")


def check_collisions(topology: Topology, prefix: str) -> None:
    """Two of our names that map to one AWS name (`a.b` and `a_b`) would share a queue."""
    seen: dict[str, str] = {}
    names = [q.name for q in topology.queues] + [q.dead_letter_queue for q in topology.queues]
    for name in dict.fromkeys(names + [f"topic:{t}" for t in topology.topics]):
        key = name.replace(".", "_")
        if key in seen:
            raise TopologyError(f"{seen[key]!r} and {name!r} map to the same AWS name {prefix + key!r}")
        seen[key] = name


def fifo_topics(topology: Topology) -> set[str]:
    """Topics that feed an ordered queue, and so must be FIFO topics."""
    return {t for q in topology.queues if q.ordered for t in q.topics}


def topic_attributes(fifo: bool) -> dict[str, Any]:
    """SNS topic attributes, named as `CreateTopic` and CloudFormation name them. The
    deduplication id is the message id, never a hash of the body."""
    return {"FifoTopic": True, "ContentBasedDeduplication": False} if fifo else {}


#: receives SQS allows beyond a queue's max attempts before it redrives a message itself
REDRIVE_HEADROOM = 50


def redrive_policy(dead_letter_arn: Any, spec: Queue) -> dict[str, Any]:
    """SQS moves a message to the DLQ once it has been received `maxReceiveCount` times:
    max attempts plus `REDRIVE_HEADROOM`, since SQS counts receives that ran no handler
    (a FIFO postpone, a follower held back behind its group's failure) and mailbag
    dead-letters a message with its reason once its own attempts are used up, before
    SQS would move it without one. `dead_letter_arn` may be a CloudFormation reference."""
    return {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": spec.retry.max_attempts + REDRIVE_HEADROOM}


def max_attempts_of(redrive: Mapping[str, Any]) -> int:
    """The max attempts behind a queue's redrive policy (the inverse of `redrive_policy`)."""
    return max(1, int(redrive["maxReceiveCount"]) - REDRIVE_HEADROOM)


def queue_attributes(
    *, fifo: bool, visibility: int, max_message_bytes: int, redrive: dict[str, Any] | None
) -> dict[str, Any]:
    """SQS queue attributes, named as `CreateQueue` and CloudFormation name them. A
    queue without a redrive policy is a dead-letter queue and keeps messages longest."""
    attributes: dict[str, Any] = {"VisibilityTimeout": visibility, "MaximumMessageSize": max_message_bytes}
    if fifo:
        attributes |= {"FifoQueue": True, "ContentBasedDeduplication": False}
    if redrive is None:
        attributes["MessageRetentionPeriod"] = DLQ_RETENTION_SECONDS
    else:
        attributes["RedrivePolicy"] = redrive
    return attributes


def subscription_attributes(sub: Subscription) -> dict[str, Any]:
    """Raw delivery (our message attributes travel as SQS attributes) and the filter."""
    attributes: dict[str, Any] = {"RawMessageDelivery": True}
    if sub.filter:
        attributes["FilterPolicy"] = filter_policy(sub.filter)
    return attributes


def admit_topics_statement(queue_arn: Any, topic_arns: list[Any]) -> dict[str, Any]:
    """The queue policy statement that lets these SNS topics, and no one else, send."""
    return {
        "Sid": POLICY_SID,
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": topic_arns}},
    }


def filter_policy(match: Mapping[str, tuple[str, ...]]) -> dict[str, list[Any]]:
    """An SNS filter policy matching like `Subscription.matches`: a header equals one of
    the listed strings. Numeric-looking values also match a Number attribute, since a
    header published as 5 travels as a Number and an SNS string match would miss it."""
    policy: dict[str, list[Any]] = {}
    for key, values in match.items():
        rules: list[Any] = list(values)
        rules += [{"numeric": ["=", float(v)]} for v in values if _NUMBER.match(v)]
        policy[key] = rules
    return policy


def policy_matches(policy: Mapping[str, Any] | None, headers: Mapping[str, Any]) -> bool:
    """Whether an SNS filter policy on message attributes admits a message with these
    headers: every key present, its value equal to one of the listed strings or
    numerically equal to a `{"numeric": ["=", x]}` rule. A rule of any other shape (a
    policy someone else wrote) counts as a match, so a routable message is never taken
    for an unroutable one."""
    if not policy:
        return True
    for key, rules in policy.items():
        if key not in headers:
            return False
        value = headers[key]
        if not any(_rule_admits(rule, value) for rule in (rules if isinstance(rules, list) else [rules])):
            return False
    return True


def _rule_admits(rule: Any, value: Any) -> bool:
    if isinstance(rule, str):
        return isinstance(value, str) and value == rule
    if isinstance(rule, dict) and list(rule) == ["numeric"] and rule["numeric"][:1] == ["="]:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value == rule["numeric"][1]
    return isinstance(rule, dict) or value == rule
