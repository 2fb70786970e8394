"""An app as an AsyncAPI 3.0 document, for the teams that publish to it or read what it
publishes: a channel per topic (an exchange on RabbitMQ, an SNS topic) and per queue
(a RabbitMQ queue, an SQS queue with its dead-letter queue), a `receive` operation per
handler, a `send` operation per topic the app declares it publishes to, and each
message's payload schema from the handler's pydantic model.

Names on AWS carry the deployment's prefix (`sqs://?prefix=`); the document names the
queues and topics as the app does, with `.fifo` where the queue is ordered.
"""

from __future__ import annotations

import re
from typing import Any

from mailbag.broker.sqs.mapping import QUEUE_NAME_MAX, TOPIC_NAME_MAX, aws_name, fifo_topics
from mailbag.broker.topology import Queue
from mailbag.workers import App

VERSION = "3.0.0"
JSON = "application/json"

#: what an id in `#/channels/...` or `#/components/...` may hold
_ID = re.compile(r"[^\w.\-]")


def document(app: App, *, version: str = "1.0.0") -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `app` as plain data (dump it as JSON or YAML)."""
    topology = app.topology
    fifo = fifo_topics(topology)
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    by_topic: dict[str, list[str]] = {}
    for handler in app.handlers.values():
        name = _message(handler.topic, handler.model, messages, schemas)
        by_topic.setdefault(handler.topic, [])
        if name not in by_topic[handler.topic]:
            by_topic[handler.topic].append(name)
    for topic in topology.topics:
        if not by_topic.get(topic):
            by_topic[topic] = [_message(topic, None, messages, schemas)]
    channels = {_id(t): _topic_channel(t, by_topic[t], t in fifo) for t in topology.topics}
    channels.update({_id(q.name): _queue_channel(q, by_topic) for q in topology.queues})
    operations: dict[str, Any] = {}
    for handler in app.handlers.values():
        channel = _id(handler.queue)
        operations[_id(f"{handler.queue}.{handler.func.__name__}")] = {
            "action": "receive",
            "channel": _ref("channels", channel),
            "summary": _first_line(handler.func.__doc__) or f"{handler.name} handles {handler.topic}",
            "messages": [_ref("channels", channel, "messages", m) for m in by_topic[handler.topic]],
        }
    for topic in app.published_topics:
        operations[_id(f"publish.{topic}")] = {
            "action": "send",
            "channel": _ref("channels", _id(topic)),
            "messages": [_ref("channels", _id(topic), "messages", m) for m in by_topic[topic]],
        }
    components: dict[str, Any] = {"messages": messages}
    if schemas:
        components["schemas"] = schemas
    return {
        "asyncapi": VERSION,
        "info": {
            "title": app.name,
            "version": version,
            "description": f"The topics, queues and handlers of mailbag app {app.name!r}. Delivery is at least "
            "once: a message may arrive more than once, and handlers drop duplicates by message id.",
        },
        "defaultContentType": JSON,
        "channels": channels,
        "operations": operations,
        "components": components,
    }


def _message(topic: str, model: Any, messages: dict[str, Any], schemas: dict[str, Any]) -> str:
    """Add the message of `topic` (typed by `model`, if any) to `messages`; its id."""
    name = _id(getattr(model, "__name__", None) or topic)
    if name in messages:
        return name
    message: dict[str, Any] = {
        "name": name,
        "contentType": JSON,
        "correlationId": {"location": "$message.header#/correlation_id"},
    }
    if model is not None and hasattr(model, "model_json_schema"):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        message["title"] = schema.get("title", name)
        message["payload"] = schema
    else:
        message["summary"] = f"any JSON body on {topic} (no model registered)"
    messages[name] = message
    return name


def _topic_channel(topic: str, messages: list[str], fifo: bool) -> dict[str, Any]:
    return {
        "address": topic,
        "description": f"topic {topic}: every queue subscribed to it gets each message",
        "messages": {m: _ref("components", "messages", m) for m in messages},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": topic, "type": "fanout", "durable": True, "autoDelete": False},
                "bindingVersion": "0.3.0",
            },
            "sns": {
                "name": aws_name("", topic, fifo, TOPIC_NAME_MAX),
                "ordering": {"type": "FIFO" if fifo else "standard"},
                "bindingVersion": "0.1.0",
            },
        },
    }


def _queue_channel(queue: Queue, by_topic: dict[str, list[str]]) -> dict[str, Any]:
    names = [m for t in queue.topics for m in by_topic.get(t, [])]
    retry = queue.retry
    return {
        "address": queue.name,
        "description": f"queue {queue.name}, fed by {', '.join(queue.topics)}; after {retry.max_attempts} "
        f"attempts a message goes to {queue.dead_letter_queue}",
        "messages": {m: _ref("components", "messages", m) for m in dict.fromkeys(names)},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {"name": queue.name, "durable": True, "exclusive": False, "autoDelete": False},
                "bindingVersion": "0.3.0",
            },
            "sqs": {
                "queue": _sqs_queue(queue.name, queue.ordered),
                "deadLetterQueue": _sqs_queue(queue.dead_letter_queue, queue.ordered),
                "bindingVersion": "0.2.0",
            },
        },
    }


def _sqs_queue(name: str, fifo: bool) -> dict[str, Any]:
    return {"name": aws_name("", name, fifo, QUEUE_NAME_MAX), "fifoQueue": fifo}


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def _id(name: str) -> str:
    return _ID.sub("_", name)


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""
