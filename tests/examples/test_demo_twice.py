"""`mailbag demo` on RabbitMQ, run twice in a row as a user runs it: both runs tell the
same story, and neither leaves a message behind for the next."""

import asyncio
import re
import subprocess
import sys
import uuid

import pytest

from tests.rabbitmq.service import amqp_url, delete_queues, queue_depths

#: a timeline line: "  12.3 ms  service  order-1  what happened"
LINE = re.compile(r"^\s*[\d.]+ ms  (\S+)\s+(\S+)\s+(.*)$")


def demo(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "demo", *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def events(out: str) -> tuple[dict[tuple[str, str], list[str]], str]:
    """What each service did for each order, in the order it did it (orders run
    concurrently, and services reacting to one event run concurrently, so only the
    order within one service's work on one order is fixed), and the summary line."""
    done: dict[tuple[str, str], list[str]] = {}
    for line in out.splitlines():
        found = LINE.match(line)
        if found:
            service, order, what = found.groups()
            done.setdefault((order, service), []).append(what)
    return done, out.strip().splitlines()[-1]


@pytest.mark.parametrize("mode", ["choreography", "saga"])
async def test_demo_twice_on_rabbitmq_tells_the_same_story_and_leaves_every_queue_empty(mode):
    prefix = f"d{uuid.uuid4().hex[:8]}-"
    args = ("--broker", amqp_url(), "--prefix", prefix, "--mode", mode)
    try:
        # When the demo runs twice in a row with the same names
        first = await asyncio.to_thread(demo, *args)
        second = await asyncio.to_thread(demo, *args)
        # Then both runs print the same events, and the second found nothing left over
        assert events(first) == events(second)
        assert events(first)[1].startswith("2 confirmed, 1 cancelled")
        depths = await asyncio.to_thread(queue_depths, prefix)
        assert depths, "the demo declared no queue under its prefix"
        assert {name: n for name, n in depths.items() if n} == {}
    finally:
        await delete_queues(await asyncio.to_thread(queue_depths, prefix))
