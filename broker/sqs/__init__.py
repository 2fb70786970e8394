"""The SNS/SQS adapter on boto3: `adapter` (the `Broker`), `client` (the boto3 clients
and their threads), `marshal` (a `Message` as message attributes and back), `mapping`
(a `Topology` as SNS/SQS resources, as plain data, shared with the CloudFormation
export) and `topology` (applying that mapping through the AWS APIs)."""

from mailbag.broker.sqs.adapter import SqsBroker, open_broker

__all__ = ["SqsBroker", "open_broker"]
