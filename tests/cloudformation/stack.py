"""Deploying an exported template on moto's CloudFormation (in process).

moto 5.2's CloudFormation makes SNS topics, SQS queues and IAM roles but skips
`AWS::SNS::Subscription` and `AWS::SQS::QueuePolicy` with a warning. The two models
below fill that gap the way CloudFormation does: by calling the same SNS and SQS
operations (on moto's own backends) with the template's properties. `deploy` refuses
any resource moto would skip, so a template never passes on moto by missing parts.
"""

from __future__ import annotations

import json
import time
from typing import Any

from moto.cloudformation import parsing
from moto.core.common_models import CloudFormationModel
from moto.sns.models import sns_backends
from moto.sqs.models import sqs_backends

_DEPLOY_TIMEOUT = 30.0


class SnsSubscription(CloudFormationModel):  # moto finds models among its direct subclasses
    """`AWS::SNS::Subscription`: Subscribe, then the attributes SNS takes with it."""

    def __init__(self, arn: str, account_id: str, region_name: str) -> None:
        self.arn = arn
        self.account_id = account_id
        self.region_name = region_name

    @property
    def physical_resource_id(self) -> str:
        return self.arn

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SNS::Subscription"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> SnsSubscription:
        props = cloudformation_json["Properties"]
        sns = sns_backends[account_id][region_name]
        subscription = sns.subscribe(props["TopicArn"], props["Endpoint"], props["Protocol"])
        attributes = {k: props[k] for k in ("FilterPolicyScope", "RawMessageDelivery", "FilterPolicy") if k in props}
        for name, value in attributes.items():  # the scope first: the filter is checked against it
            sns.set_subscription_attributes(subscription.arn, name, _as_attribute(value))
        return cls(subscription.arn, account_id, region_name)

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
    ) -> None:
        sns_backends[account_id][region_name].unsubscribe(resource_name)


class SqsQueuePolicy(CloudFormationModel):
    """`AWS::SQS::QueuePolicy`: SetQueueAttributes(Policy) on each queue (by URL)."""

    def __init__(self, queue_urls: list[str]) -> None:
        self.queue_urls = queue_urls

    @property
    def physical_resource_id(self) -> str:
        return ",".join(self.queue_urls)

    @staticmethod
    def cloudformation_name_type() -> str:
        return ""

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::SQS::QueuePolicy"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str, **kwargs: Any
    ) -> SqsQueuePolicy:
        props = cloudformation_json["Properties"]
        sqs = sqs_backends[account_id][region_name]
        for url in props["Queues"]:
            sqs.set_queue_attributes(url.rsplit("/", 1)[-1], {"Policy": json.dumps(props["PolicyDocument"])})
        return cls(list(props["Queues"]))

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[override]
        cls, resource_name: str, cloudformation_json: dict[str, Any], account_id: str, region_name: str
    ) -> None:
        sqs = sqs_backends[account_id][region_name]
        for url in resource_name.split(","):
            sqs.set_queue_attributes(url.rsplit("/", 1)[-1], {"Policy": ""})


# moto finds resource models among CloudFormationModel's subclasses, cached on first use
for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
    cached.cache_clear()


def _as_attribute(value: Any) -> str:
    """A property as the SNS API takes it: CloudFormation turns JSON into text and
    booleans into "true"/"false"."""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def deploy(cfn: Any, name: str, template: dict[str, Any], **parameters: str) -> dict[str, str]:
    """Create the stack `name`, or update it if it exists, and wait until done; returns
    its outputs. Fails on a resource type moto would skip (it only warns), or a failed stack."""
    known = parsing.get_model_map()
    skipped = sorted({r["Type"] for r in template["Resources"].values()} - set(known))
    if skipped:
        raise AssertionError(f"moto cannot create {', '.join(skipped)}: the stack would be incomplete")
    request = {
        "StackName": name,
        "TemplateBody": json.dumps(template),
        "Capabilities": ["CAPABILITY_IAM"],
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    }
    existing = [
        s
        for s in cfn.list_stacks()["StackSummaries"]
        if s["StackName"] == name and s["StackStatus"] != "DELETE_COMPLETE"
    ]
    (cfn.update_stack if existing else cfn.create_stack)(**request)
    deadline = time.monotonic() + _DEPLOY_TIMEOUT
    while True:
        [stack] = cfn.describe_stacks(StackName=name)["Stacks"]
        status = stack["StackStatus"]
        if status in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        if not status.endswith("IN_PROGRESS"):
            raise AssertionError(f"stack {name} ended {status}: {stack.get('StackStatusReason')}")
        if time.monotonic() > deadline:
            raise AssertionError(f"stack {name} still {status} after {_DEPLOY_TIMEOUT}s")
        time.sleep(0.05)  # polling a stack's status with a deadline
