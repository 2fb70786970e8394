"""The messages a scenario sends: numbered bodies spread over ordering keys, published
in batches and recorded in the ledger just before each batch goes out."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence

from mailbag.broker import Broker, Message
from mailbag.harness.ledger import Ledger


def run_name(scenario: str) -> str:
    """A fresh name per scenario run, so runs never see each other's messages."""
    return f"cmp-{uuid.uuid4().hex[:8]}-{scenario}"


def messages(topic: str, count: int, keys: int) -> list[Message]:
    """`count` messages, message i on key `k{i % keys}`; the body names both."""
    return [
        Message(topic, json.dumps({"n": i, "key": f"k{i % keys}"}).encode(), ordering_key=f"k{i % keys}")
        for i in range(count)
    ]


async def publish(
    broker: Broker, topic: str, batch: Sequence[Message], ledgers: Sequence[Ledger], size: int, in_flight: int = 1
) -> None:
    """Publish in calls of `size`, recording each call's messages in every ledger first
    (latency is measured from the moment the publish call starts). With `in_flight`
    above 1, that many calls wait for their confirms at once, as a busy service's
    concurrent requests do; with 1, each call waits for the previous one's."""
    slots = asyncio.Semaphore(in_flight)

    async def call(chunk: Sequence[Message]) -> None:
        async with slots:
            for ledger in ledgers:
                ledger.publishing(chunk)
            await broker.publish(topic, chunk)

    if in_flight == 1:
        for start in range(0, len(batch), size):
            await call(batch[start : start + size])
        return
    await asyncio.gather(*(call(batch[start : start + size]) for start in range(0, len(batch), size)))
