"""A `Topology` on SNS/SQS: names, creation and lookup of topics and queues.

topic -> SNS topic; queue -> SQS queue whose policy admits only its topics
(`aws:SourceArn`), subscribed with raw delivery and an optional filter policy on message
attributes; dead-letter queue -> `RedrivePolicy` with maxReceiveCount = max attempts plus headroom;
ordered queue -> FIFO queue (and FIFO topics feeding it). Every AWS name is the broker's
prefix plus ours with '.' turned into '_' (SNS and SQS names allow no dots), plus
`.fifo` where FIFO; each queue carries its own name in the `mailbag-name` tag. The
mapping itself lives in `mailbag.broker.sqs.mapping`, shared with the CloudFormation export.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mailbag.broker.errors import TopologyError, UnknownQueue, UnknownTopic
from mailbag.broker.sqs.client import AwsClients, AwsError
from mailbag.broker.sqs.mapping import (
    NAME_TAG,
    POLICY_SID,
    QUEUE_NAME_MAX,
    TOPIC_NAME_MAX,
    TOPICS_TAG,
    admit_topics_statement,
    aws_name,
    check_collisions,
    check_prefix,
    fifo_topics,
    filter_policy,
    max_attempts_of,
    queue_attributes,
    queue_tags,
    redrive_policy,
    subscription_attributes,
    topic_attributes,
)
from mailbag.broker.topology import Queue, Subscription, Topology

_MISSING_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
#: seconds a topic's subscriptions are trusted before they are listed again
ROUTES_TTL = 30.0
_QUEUE_EXISTS = ("QueueAlreadyExists", "QueueNameExists")


@dataclass(frozen=True)
class QueueRef:
    """What the adapter needs to know about one SQS queue."""

    name: str
    url: str
    arn: str
    fifo: bool
    visibility: int
    #: the queue's max attempts (SQS redrives with some headroom past it); None for a queue without a DLQ
    max_attempts: int | None
    dead_letter: QueueRef | None
    topics: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopicRef:
    name: str
    arn: str
    fifo: bool


class Resources:
    """The broker's view of its topics and queues: declared from a `Topology`, or found
    by name when another process declared them. Lookups are cached per broker."""

    def __init__(self, aws: AwsClients, *, prefix: str, visibility: int, max_message_bytes: int) -> None:
        check_prefix(prefix)
        self.aws = aws
        self.prefix = prefix
        self.visibility = visibility
        self.max_message_bytes = max_message_bytes
        self._queues: dict[str, QueueRef] = {}
        self._topics: dict[str, TopicRef] = {}
        self._topic_arns: dict[str, str] = {}
        #: topic name -> (when listed, the filter policy of each SQS subscription, None for none)
        self._routes: dict[str, tuple[float, list[dict[str, Any] | None]]] = {}

    # -- names ----------------------------------------------------------------

    def aws_name(self, name: str, fifo: bool, limit: int = QUEUE_NAME_MAX) -> str:
        return aws_name(self.prefix, name, fifo, limit)

    # -- declare --------------------------------------------------------------

    async def declare(self, topology: Topology) -> None:
        check_collisions(topology, self.prefix)
        fifo = fifo_topics(topology)
        topics = {t: await self._ensure_topic(t, t in fifo) for t in topology.topics}
        for spec in topology.queues:
            dlq = await self._ensure_queue(spec.dead_letter_queue, spec.ordered, None)
            queue = await self._ensure_queue(spec.name, spec.ordered, (spec, dlq))
            await self._admit(queue, [topics[t].arn for t in spec.topics])
            for sub in spec.subscriptions:
                await self._subscribe(topics[sub.topic], queue, sub)
                self._routes.pop(sub.topic, None)

    async def remove(self, topology: Topology) -> None:
        """Delete the queues (dead-letter queues too) and the topics; SNS drops a deleted
        topic's subscriptions with it."""
        for spec in topology.queues:
            for name in (spec.name, spec.dead_letter_queue):
                self._queues.pop(name, None)
                for fifo in (False, True):
                    url = await self._queue_url(self.aws_name(name, fifo))
                    if url is not None:
                        await self.aws.call(self.aws.sqs.delete_queue, QueueUrl=url)
        for topic in topology.topics:
            ref = await self._find_topic(topic)
            if ref is not None:
                await self.aws.call(self.aws.sns.delete_topic, TopicArn=ref.arn)
                self._topics.pop(topic, None)
                self._topic_arns = {n: arn for n, arn in self._topic_arns.items() if arn != ref.arn}

    async def _ensure_topic(self, name: str, fifo: bool) -> TopicRef:
        existing = await self._find_topic(name)
        if existing is not None:
            if fifo and not existing.fifo:
                raise TopologyError(
                    f"topic {name!r} exists as a standard SNS topic; an ordered queue needs a FIFO topic"
                )
            return existing
        result = await self.aws.call(
            self.aws.sns.create_topic,
            Name=self.aws_name(name, fifo, TOPIC_NAME_MAX),
            Attributes=_for_api(topic_attributes(fifo)),
        )
        ref = TopicRef(name, result["TopicArn"], fifo)
        self._topics[name] = ref
        self._topic_arns[self.aws_name(name, fifo, TOPIC_NAME_MAX)] = ref.arn
        return ref

    async def _ensure_queue(self, name: str, fifo: bool, redrive: tuple[Queue, QueueRef] | None) -> QueueRef:
        """Find the queue and check its settings, or create it: a worker whose role may
        not create queues still starts on a topology deployed for it."""
        aws_name = self.aws_name(name, fifo)
        wanted = _for_api(
            queue_attributes(
                fifo=fifo,
                visibility=self.visibility,
                max_message_bytes=self.max_message_bytes,
                redrive=None if redrive is None else redrive_policy(redrive[1].arn, redrive[0]),
            )
        )
        url = await self._queue_url(aws_name)
        if url is None:
            try:
                url = (
                    await self.aws.call(
                        self.aws.sqs.create_queue,
                        QueueName=aws_name,
                        Attributes=wanted,
                        tags=queue_tags(name, redrive[0].topics if redrive else ()),
                    )
                )["QueueUrl"]
            except AwsError as exc:
                if exc.code not in _QUEUE_EXISTS:
                    raise
                # created meanwhile with other settings: the check below names the one
                url = (await self.aws.call(self.aws.sqs.get_queue_url, QueueName=aws_name))["QueueUrl"]
        attrs = await self._attributes(url)
        _check_settings(name, attrs, wanted)
        ref = QueueRef(
            name=name,
            url=url,
            arn=attrs["QueueArn"],
            fifo=fifo,
            visibility=self.visibility,
            max_attempts=redrive[0].retry.max_attempts if redrive else None,
            dead_letter=redrive[1] if redrive else None,
            topics=redrive[0].topics if redrive else (),
        )
        self._queues[name] = ref
        return ref

    async def _queue_url(self, aws_name: str) -> str | None:
        try:
            return (await self.aws.call(self.aws.sqs.get_queue_url, QueueName=aws_name))["QueueUrl"]
        except AwsError as exc:
            if exc.code in _MISSING_QUEUE:
                return None
            raise

    async def _admit(self, queue: QueueRef, topic_arns: list[str]) -> None:
        """Let the queue's topics (and only those) send to it, keeping any statements
        someone else added to the policy."""
        current = (await self._attributes(queue.url)).get("Policy")
        policy: dict[str, Any] = json.loads(current) if current else {"Version": "2012-10-17", "Statement": []}
        ours = next((s for s in policy["Statement"] if s.get("Sid") == POLICY_SID), None)
        source = ours["Condition"]["ArnEquals"]["aws:SourceArn"] if ours else []
        admitted = {source} if isinstance(source, str) else set(source)
        if set(topic_arns) <= admitted:
            return
        statement = admit_topics_statement(queue.arn, sorted(admitted | set(topic_arns)))
        policy["Statement"] = [s for s in policy["Statement"] if s.get("Sid") != POLICY_SID] + [statement]
        await self.aws.call(
            self.aws.sqs.set_queue_attributes, QueueUrl=queue.url, Attributes={"Policy": json.dumps(policy)}
        )

    async def _subscribe(self, topic: TopicRef, queue: QueueRef, sub: Subscription) -> None:
        wanted = _for_api(subscription_attributes(sub))
        existing = await self._subscription(topic, queue)
        if existing is None:
            await self.aws.call(
                self.aws.sns.subscribe,
                TopicArn=topic.arn,
                Protocol="sqs",
                Endpoint=queue.arn,
                Attributes=wanted,
                ReturnSubscriptionArn=True,
            )
            return
        have = (await self.aws.call(self.aws.sns.get_subscription_attributes, SubscriptionArn=existing))["Attributes"]
        theirs = json.loads(have["FilterPolicy"]) if have.get("FilterPolicy") else None
        ours = filter_policy(sub.filter) if sub.filter else None
        if theirs != ours or have.get("RawMessageDelivery", "false").lower() != "true":
            raise TopologyError(
                f"queue {queue.name!r} is already subscribed to {topic.name!r} with filter {theirs} "
                f"(raw delivery {have.get('RawMessageDelivery')}); redeclared with filter {ours}"
            )

    async def _subscription(self, topic: TopicRef, queue: QueueRef) -> str | None:
        params: dict[str, Any] = {"TopicArn": topic.arn}
        while True:
            page = await self.aws.call(self.aws.sns.list_subscriptions_by_topic, **params)
            for s in page.get("Subscriptions", []):
                if s["Protocol"] == "sqs" and s["Endpoint"] == queue.arn:
                    return s["SubscriptionArn"]
            if not page.get("NextToken"):
                return None
            params["NextToken"] = page["NextToken"]

    # -- lookup ---------------------------------------------------------------

    async def routes(self, topic: TopicRef, *, max_age: float = ROUTES_TTL) -> list[dict[str, Any] | None]:
        """The filter policy of each SQS queue subscribed to `topic` (None: no filter),
        listed again when what is known is older than `max_age` seconds: SNS drops what
        no subscription takes without a word, so the adapter checks this itself."""
        cached = self._routes.get(topic.name)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        policies: list[dict[str, Any] | None] = []
        params: dict[str, Any] = {"TopicArn": topic.arn}
        while True:
            page = await self.aws.call(self.aws.sns.list_subscriptions_by_topic, **params)
            for sub in page.get("Subscriptions", []):
                if sub["Protocol"] != "sqs" or not sub["SubscriptionArn"].startswith("arn:"):
                    continue  # another protocol, or pending confirmation
                attrs = await self.aws.call(
                    self.aws.sns.get_subscription_attributes, SubscriptionArn=sub["SubscriptionArn"]
                )
                policy = attrs.get("Attributes", {}).get("FilterPolicy")
                policies.append(json.loads(policy) if policy else None)
            if not page.get("NextToken"):
                break
            params["NextToken"] = page["NextToken"]
        self._routes[topic.name] = (time.monotonic(), policies)
        return policies

    async def topic(self, name: str) -> TopicRef:
        ref = await self._find_topic(name)
        if ref is None:
            raise UnknownTopic(
                f"topic {name!r} is not declared (no SNS topic {self.aws_name(name, False, TOPIC_NAME_MAX)!r})"
            )
        return ref

    async def _find_topic(self, name: str) -> TopicRef | None:
        ref = self._topics.get(name)
        if ref is None:
            candidates = [(self.aws_name(name, fifo, TOPIC_NAME_MAX), fifo) for fifo in (False, True)]
            if not any(aws_name in self._topic_arns for aws_name, _ in candidates):
                await self._list_topics()
            for aws_name, fifo in candidates:
                if aws_name in self._topic_arns:
                    ref = self._topics[name] = TopicRef(name, self._topic_arns[aws_name], fifo)
        return ref

    async def _list_topics(self) -> None:
        """Refresh the ARNs of every SNS topic under the prefix (SNS finds no topic by name)."""
        params: dict[str, Any] = {}
        while True:
            page = await self.aws.call(self.aws.sns.list_topics, **params)
            for t in page.get("Topics", []):
                aws_name = t["TopicArn"].rsplit(":", 1)[-1]
                if aws_name.startswith(self.prefix):
                    self._topic_arns[aws_name] = t["TopicArn"]
            if not page.get("NextToken"):
                return
            params["NextToken"] = page["NextToken"]

    async def queue(self, name: str) -> QueueRef:
        ref = self._queues.get(name)
        if ref is None:
            ref = await self._find_queue(name)
            self._queues[name] = ref
        return ref

    async def _find_queue(self, name: str) -> QueueRef:
        for fifo in (False, True):
            try:
                result = await self.aws.call(self.aws.sqs.get_queue_url, QueueName=self.aws_name(name, fifo))
            except AwsError as exc:
                if exc.code in _MISSING_QUEUE:
                    continue
                raise
            return await self._ref(name, result["QueueUrl"])
        raise UnknownQueue(f"queue {name!r} is not declared (no SQS queue {self.aws_name(name, False)!r})")

    async def _ref(self, name: str, url: str) -> QueueRef:
        attrs = await self._attributes(url)
        redrive = json.loads(attrs["RedrivePolicy"]) if attrs.get("RedrivePolicy") else None
        dead_letter = None
        if redrive is not None:
            dlq_aws_name = redrive["deadLetterTargetArn"].rsplit(":", 1)[-1]
            dlq_url = (await self.aws.call(self.aws.sqs.get_queue_url, QueueName=dlq_aws_name))["QueueUrl"]
            dlq_name = dlq_aws_name[len(self.prefix) :].removesuffix(".fifo")
            dead_letter = await self._ref(dlq_name, dlq_url)
        tags = (await self.aws.call(self.aws.sqs.list_queue_tags, QueueUrl=url)).get("Tags", {})
        return QueueRef(
            name=name,
            url=url,
            arn=attrs["QueueArn"],
            fifo=attrs.get("FifoQueue", "false").lower() == "true",
            visibility=int(attrs.get("VisibilityTimeout", self.visibility)),
            max_attempts=max_attempts_of(redrive) if redrive else None,
            dead_letter=dead_letter,
            topics=tuple(tags.get(TOPICS_TAG, "").split()),
        )

    async def _attributes(self, url: str) -> dict[str, str]:
        result = await self.aws.call(self.aws.sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["All"])
        return result.get("Attributes", {})

    async def queue_names(self) -> list[str]:
        names = []
        params: dict[str, Any] = {"QueueNamePrefix": self.prefix} if self.prefix else {}
        while True:
            page = await self.aws.call(self.aws.sqs.list_queues, **params)
            for url in page.get("QueueUrls", []):
                tags = (await self.aws.call(self.aws.sqs.list_queue_tags, QueueUrl=url)).get("Tags", {})
                aws_name = url.rsplit("/", 1)[-1]
                names.append(tags.get(NAME_TAG) or aws_name[len(self.prefix) :].removesuffix(".fifo"))
            if not page.get("NextToken"):
                return sorted(names)
            params["NextToken"] = page["NextToken"]


def _check_settings(name: str, have: dict[str, str], wanted: dict[str, str]) -> None:
    for key, value in wanted.items():
        theirs = have.get(key)
        if key == "RedrivePolicy" and theirs is not None:
            same = json.loads(theirs) == json.loads(value)
        else:
            same = theirs == value
        if not same:
            raise TopologyError(f"queue {name!r} already exists with {key}={theirs}; redeclared with {key}={value}")


def _for_api(attributes: dict[str, Any]) -> dict[str, str]:
    """Attribute values as the SNS and SQS APIs take them: all strings, JSON for policies."""
    return {
        key: json.dumps(value)
        if isinstance(value, dict)
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
        for key, value in attributes.items()
    }
