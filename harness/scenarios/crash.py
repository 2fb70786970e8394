"""Crash: a consumer dies holding unsettled messages; how many come back to the
survivor, how long that takes, and with which attempt number.

On a broker in another process the consumer is a child process (`mailbag.harness.crash_child`)
killed with SIGKILL. The in-memory broker lives inside this process, so there the crash
is simulated by closing the consumer without settling what it holds."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter

from mailbag.broker import Broker, Delivery, Topology
from mailbag.harness import stats
from mailbag.harness.drive import Lane, drain
from mailbag.harness.ledger import Ledger, Meter
from mailbag.harness.result import ScenarioResult
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target
from mailbag.harness.traffic import messages, publish, run_name

NAME = "crash"
TITLE = "consumer killed holding unacked messages"

#: once the doomed consumer has its first message, how long to wait for each further one
#: (an ordered queue hands out one message per key at a time, so it may never get all)
NEXT_WAIT = 1.0

#: the environment variable that hands the child the broker URL (argv is visible to `ps`)
URL_VARIABLE = "MAILBAG_HARNESS_URL"


def topology(target: Target, name: str) -> Topology:
    """The queue both the parent and the crashing child declare (identically)."""
    return Topology(queues=(target.queue(name, name),))


async def run(broker: Broker, target: Target, settings: Settings, meter: Meter) -> ScenarioResult:
    result = ScenarioResult(NAME, target.label, target.display)
    meter.expect(settings.messages)
    ledger = Ledger(meter)
    name = run_name(NAME)
    await broker.declare(topology(target, name))
    await publish(broker, name, messages(name, settings.messages, settings.keys), [ledger], settings.batch)
    hold = min(settings.crash_hold, settings.messages)
    if target.in_process:
        held, killed_at = await _close_holding(broker, name, hold, settings.patience)
        result.note("simulated crash: the in-memory broker shares this process, so the consumer was closed unsettled")
    else:
        held, killed_at = await _kill_holding(target, name, hold, settings.patience)
    ledger.mark(killed_at)  # the consumer took a while to start: patience counts from its death
    back: dict[str, float] = {}
    attempts: Counter[int] = Counter()

    async def handle(delivery: Delivery, consumer: int) -> None:
        arrival = ledger.arrived(delivery, consumer)
        if arrival.id in held and arrival.id not in back:
            back[arrival.id] = arrival.at - killed_at
            attempts[arrival.attempt] += 1
        ledger.done(arrival)
        await delivery.ack()

    lane = Lane(name, handle, 1, settings.prefetch)
    await drain(
        broker,
        [ledger],
        [lane],
        grace=settings.listen,
        patience=settings.patience,
    )

    result.count(ledger)
    waits = list(back.values())
    result.series["comeback_seconds"] = waits
    result.metrics.update(
        held=len(held),
        came_back=len(back),
        comeback_seconds=stats.summary(waits),
        comeback_attempts={str(a): n for a, n in sorted(attempts.items())},
        simulated=target.in_process,
    )
    missing = len(held) - len(back)
    if missing:
        result.fail(f"{missing} of {len(held)} messages held by the crashed consumer never came back")
    if len(held) < hold:
        result.note(f"the doomed consumer was handed only {len(held)} of the {hold} messages it asked for")
    seen = f"p50={stats.percentile(waits, 50):.2f}s max={max(waits):.2f}s" if waits else "none"
    result.summary = f"{len(back)}/{len(held)} came back, after {seen}; attempts {dict(sorted(attempts.items()))}"
    return result


async def _close_holding(broker: Broker, queue: str, hold: int, patience: float) -> tuple[set[str], float]:
    consumer = broker.consume(queue, prefetch=hold)
    held: set[str] = set()
    try:
        while len(held) < hold:
            delivery = await asyncio.wait_for(anext(consumer), NEXT_WAIT if held else patience)
            held.add(delivery.message.id)
    except TimeoutError:
        pass
    killed_at = time.monotonic()
    await consumer.close()
    return held, killed_at


async def _kill_holding(target: Target, queue: str, hold: int, patience: float) -> tuple[set[str], float]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailbag.harness.crash_child",
        queue,
        str(hold),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, URL_VARIABLE: target.url},
    )
    assert child.stdout is not None and child.stderr is not None
    held: set[str] = set()
    try:
        while len(held) < hold:
            # the first message waits for the child to start up as well
            line = await asyncio.wait_for(child.stdout.readline(), NEXT_WAIT if held else patience + 10)
            if not line:
                error = (await child.stderr.read()).decode().strip().splitlines()
                raise RuntimeError(f"the crash consumer exited early: {error[-1] if error else 'no output'}")
            held.add(line.decode().strip())
    except TimeoutError:
        pass
    finally:
        killed_at = time.monotonic()
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    return held, killed_at
