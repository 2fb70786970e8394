"""Small helpers shared by the SNS/SQS tests."""

from mailbag.broker import Message


def message(topic: str, body: bytes = b'{"ok": true}', **fields) -> Message:
    return Message(topic, body, **fields)


class CallCounter:
    """Counts API calls a boto3 client makes, by operation name (botocore event hook)."""

    def __init__(self, *clients) -> None:
        self.calls: list[str] = []
        for client in clients:
            client.meta.events.register("before-call.*.*", self._count)

    def _count(self, model, **_) -> None:
        self.calls.append(model.name)

    def count(self, operation: str) -> int:
        return self.calls.count(operation)
