"""A dead-letter queue that refuses every publish (a RabbitMQ policy: max-length 0 with
reject-publish, so the broker nacks the dead-letter copy) under a running worker: the
poison message backs off instead of running hot, healthy messages flow, and once the
queue takes messages again the poison one lands in it with its reason."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess

from mailbag.broker import Message
from mailbag.broker.rabbitmq import open_broker
from mailbag.dlq import DeadLetters
from mailbag.workers import Worker
from mailbag.workers.stores import open_store
from tests.conformance.env import WINDOW, PoisonApp, assert_backed_off, eventually, mailbag_warnings
from tests.names import run_name
from tests.rabbitmq.service import VHOST, amqp_url, remove_declared


def _ctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def _policy_on(queue: str) -> str:
    for line in _ctl("list_queues", "-p", VHOST, "name", "policy").splitlines():
        parts = line.split()
        if parts and parts[0] == queue:
            return parts[1] if len(parts) > 1 else ""
    return ""


async def test_a_dead_letter_queue_refusing_publishes_backs_the_poison_message_off_until_it_takes_them(caplog):
    # Given a worker, and the queue's dead-letter queue refusing every publish
    stem = run_name("dr")
    topic, queue = f"{stem}-orders", f"{stem}-work"
    poisoned = PoisonApp(f"{stem}-app", topic, queue)
    app = poisoned.app

    broker = await open_broker(amqp_url())
    policy = f"{stem}-refuse"
    dead_letter_queue = app.topology.queue(queue).dead_letter_queue
    try:
        async with Worker(app, broker, concurrency=4, store=await open_store("memory://")):
            refuse = {"max-length": 0, "overflow": "reject-publish"}
            pattern = f"^{re.escape(dead_letter_queue)}$"
            await asyncio.to_thread(
                _ctl, "set_policy", "-p", VHOST, "--apply-to", "queues", "--priority", "999",
                policy, pattern, json.dumps(refuse),
            )  # fmt: skip

            async def refusing() -> bool:
                return await asyncio.to_thread(_policy_on, dead_letter_queue) == policy

            await eventually(refusing, timeout=30, what="the policy on the dead-letter queue")
            poison = Message(topic, b'{"poison": true}')
            healthy = [Message(topic, b'{"n": %d}' % i) for i in range(30)]
            loop = asyncio.get_running_loop()
            with caplog.at_level(logging.WARNING, logger="mailbag"):
                # When the poison message and healthy ones are published
                await broker.publish(topic, [poison, *healthy])
                started = loop.time()

                async def window_over() -> bool:
                    return loop.time() - started >= WINDOW

                await eventually(window_over, timeout=WINDOW + 5, what="the window")
                # (the worker's lines: the broker's own, about its channel or the vhost's
                # orphans, are not the returns counted here)
                worker_lines = [r for r in mailbag_warnings(caplog.records) if r.name.startswith("mailbag.worker")]
                runs, lines = poisoned.poison_runs, worker_lines
            # Then the healthy ones were handled, and the poison one ran a bounded number of
            # times, one log line each return, each naming the refusal
            assert poisoned.handled == {m.id for m in healthy}
            assert_backed_off(runs, lines)
            assert all("refused" in r.getMessage() for r in lines), [r.getMessage() for r in lines]
            # When the dead-letter queue takes messages again
            await asyncio.to_thread(_ctl, "clear_policy", "-p", VHOST, policy)

            async def dead_lettered() -> bool:
                return (await broker.stats(queue)).dead_letters == 1

            # Then the poison message lands in it within the pause, with its reason
            await eventually(dead_lettered, timeout=40, what="the poison message dead-lettered")
        [record] = await DeadLetters(broker, queue).ls()
        assert record.id == poison.id and record.reason == "not retryable: ValueError: poison"
    finally:
        clear = ["rabbitmqctl", "-q", "clear_policy", "-p", VHOST, policy]  # gone already if the test got far
        await asyncio.to_thread(subprocess.run, clear, capture_output=True, timeout=60)
        await broker.close()
        await remove_declared(broker)
