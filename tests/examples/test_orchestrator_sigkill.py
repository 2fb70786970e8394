"""The saga orchestrator SIGKILLed mid-saga and started again: every saga ends
completed or compensated, none stuck. RabbitMQ holds the messages while no
orchestrator runs; the SQLite file holds the sagas."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from mailbag.examples.orders.events import Topics
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Payments, Shop
from mailbag.workers import Worker
from mailbag.workers.saga.store import open_store
from tests.conformance.env import eventually
from tests.examples.conftest import target

ORDERS = 12
ROOT = Path(__file__).resolve().parents[2]


def orchestrator(url: str, store_url: str, prefix: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailbag.examples.orders.orchestrator",
            "--broker",
            url,
            "--store",
            store_url,
            "--prefix",
            prefix,
            "--orders",
            str(ORDERS),
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def test_an_orchestrator_killed_mid_saga_resumes_and_ends_every_saga(tmp_path):
    async with target("rabbitmq") as on:
        topics, shop = Topics(on.prefix), Shop(payments=Payments(fail_every=3))
        saga = order_saga(topics)
        participants = build_participants(shop, saga, topics)
        payment_queue = topics.queue("payment.commands")
        others = [q for q in participants.queues if q != payment_queue]
        store_url = f"sqlite:///{tmp_path / 'sagas.db'}"
        store = await open_store(store_url)
        first = second = None
        async with await on.open() as broker:
            try:
                # Given the services running, all but payment, whose commands wait in its queue
                async with Worker(participants, broker, queues=others):
                    first = orchestrator(on.url, store_url, on.prefix, tmp_path)

                    async def every_charge_waiting() -> bool:
                        assert first.poll() is None, first.stderr.read().decode()
                        return (await broker.stats(payment_queue)).ready == ORDERS

                    await eventually(every_charge_waiting, timeout=60, what="every saga to wait on its charge")
                    # When the orchestrator is SIGKILLed with every saga mid-way
                    first.send_signal(signal.SIGKILL)
                    assert first.wait(10) == -signal.SIGKILL
                    assert {s.step for s in await store.active(saga.name)} == {2}
                    # and payment answers while no orchestrator runs, then a new one starts
                    async with Worker(participants, broker, queues=[payment_queue]):
                        second = orchestrator(on.url, store_url, on.prefix, tmp_path)

                        async def all_ended() -> bool:
                            assert second.poll() is None, second.stderr.read().decode()
                            return not await store.active(saga.name)

                        await eventually(all_ended, timeout=60, what="every saga to end")
                        await eventually(lambda: _everyone_told(shop), timeout=30, what="every customer told")
            finally:
                for process in (first, second):
                    if process is not None and process.poll() is None:
                        process.terminate()
                        process.wait(10)
                    if process is not None:
                        process.stderr.close()
                await store.close()
    # Then each saga ended as its payment decided, and the stock agrees
    ended = {n: (await _status(store_url, saga.name, f"order-{n}")) for n in range(1, ORDERS + 1)}
    assert ended == {n: "compensated" if n % 3 == 0 else "completed" for n in range(1, ORDERS + 1)}
    assert set(shop.inventory.reservations) == {f"order-{n}" for n in range(1, ORDERS + 1) if n % 3}
    assert set(shop.payments.charges) == set(shop.inventory.reservations)
    assert shop.orders.count("confirmed") == ORDERS - ORDERS // 3
    assert shop.orders.count("cancelled") == ORDERS // 3


async def _everyone_told(shop: Shop) -> bool:
    return len(shop.notifier.told) >= ORDERS


async def _status(store_url: str, saga: str, saga_id: str) -> str:
    store = await open_store(store_url)
    try:
        return (await store.get(saga, saga_id)).status
    finally:
        await store.close()
