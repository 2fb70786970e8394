"""JSON log lines: each parses, and what the runtime writes about a message says which
message, which flow, which queue and which attempt."""

from __future__ import annotations

import io
import json
import logging

import pytest

from mailbag.workers import logs
from tests.conformance.env import eventually
from tests.observability.conftest import observed, opened


@pytest.fixture
def json_lines():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.handlers[:], level = saved
    root.setLevel(level)


async def test_json_lines_carry_message_correlation_queue_and_attempt(json_lines):
    async with opened("memory") as broker, observed(broker, "memory") as obs:
        # When a message fails its first attempt and succeeds on the second
        message = await obs.publish(b'{"fail_first": true}')

        async def handled_twice() -> bool:
            return sum(r["message"] == "handling job" for r in json_lines()) == 2

        await eventually(handled_twice, what="two runs of the handler")
    records = json_lines()
    # Then every line is a JSON object with time, level, logger and message
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    # and the runtime's line about the failure names the message, its flow, queue and attempt
    [failure] = [r for r in records if r["logger"] == "mailbag.worker" and r.get("action") == "retry"]
    assert failure["level"] == "WARNING" and failure["error"] == "RuntimeError: flaky dependency"
    assert (failure["message_id"], failure["correlation_id"], failure["queue"], failure["attempt"]) == (
        message.id,
        message.id,
        obs.topic,
        1,
    )
    # and the handler's own lines carry the message's ids, queue and attempt
    runs = [r for r in records if r["message"] == "handling job"]
    assert [(r["message_id"], r["correlation_id"], r["queue"], r["attempt"]) for r in runs] == [
        (message.id, message.id, obs.topic, 1),
        (message.id, message.id, obs.topic, 2),
    ]


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="log format must be text or json"):
        logs.configure("INFO", "xml")  # type: ignore[arg-type]
