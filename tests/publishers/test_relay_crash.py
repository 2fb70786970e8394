"""The relay killed with SIGKILL in the middle of a batch -- published, not yet marked
sent -- and started again: no row is lost, the unmarked ones go out again under the
same ids, and consumers see every order."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conformance.env import eventually
from tests.publishers.conftest import LINKS

REPO = Path(__file__).resolve().parents[2]


def start_relay(db, broker_url: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.publishers.relay_child",
            "--db",
            db.url,
            "--table",
            db.table,
            "--broker",
            broker_url,
            "--log",
            str(log),
            "--batch",
            "40",
            *extra,
        ],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_file(path: Path, child: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if child.poll() is not None:
            raise AssertionError(f"relay exited early ({child.returncode}): {child.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {path.name}")
        time.sleep(0.02)  # polling a child process's file with a deadline


@pytest.mark.parametrize("backend", list(LINKS))
async def test_a_relay_killed_mid_batch_loses_nothing_when_restarted(backend, orders, tmp_path):
    # Given 120 committed orders, and a queue that receives them
    async with LINKS[backend]() as link:
        topic = link.name("orders")
        queue = await link.queue(topic)
        placed = [await orders.place(f"o-{n}", topic, {"n": n}, key=f"k{n % 5}") for n in range(120)]
        log = tmp_path / "confirmed.log"

        # When the relay is SIGKILLed after its second batch was confirmed, before it was marked sent
        first = start_relay(orders, link.url, log, "--hang-after", "60")
        try:
            wait_for_file(Path(f"{log}.hung"), first)
            assert (await orders.outbox.stats()).sent == 40
            assert len(log.read_text().split()) == 80
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)

        # And started again
        second = start_relay(orders, link.url, log)
        try:
            await eventually(_all_sent(orders.outbox), timeout=30, what="every row marked sent")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, second.stderr.read()

        # Then every row was published, the killed batch twice under the same ids
        published = log.read_text().split()
        assert set(published) == set(placed)
        assert len(published) == 160
        if backend != "memory":
            assert await _distinct_ids(link.observer, queue.name, 120) == set(placed)


def _all_sent(outbox):
    async def check() -> bool:
        s = await outbox.stats()
        return s.pending == 0 and s.sent == 120

    return check


async def _distinct_ids(broker, queue: str, count: int) -> set[str]:
    seen: set[str] = set()

    async def take() -> None:
        async with broker.consume(queue, prefetch=100) as consumer:
            async for d in consumer:
                seen.add(d.message.id)
                await d.ack()
                if len(seen) == count:
                    return

    await asyncio.wait_for(take(), 30)
    return seen
