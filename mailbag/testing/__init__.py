"""Testing your own app: `TestBus` runs an app's handlers in the test's event loop
on `memory://` (in virtual time), SNS/SQS on moto, or a real RabbitMQ, and tells what
became of each message; `sqs_event` / `sns_event` build Lambda events from messages
really received from a queue, for `handler_for(app)`. The pytest plugin
(`mailbag.testing.plugin`, found through its entry point) adds the `mailbag_bus`
fixture and the `--mailbag-broker` option. See docs/testing.md.

It never changes how the layers below behave: it drives them from outside, through the
broker contract, the worker's middleware and an injected clock.
"""

from mailbag.testing.bus import NotSettled, Outcome, TestBus
from mailbag.testing.events import LambdaContext, sns_event, sqs_event

__all__ = ["LambdaContext", "NotSettled", "Outcome", "TestBus", "sns_event", "sqs_event"]
