"""The order flow end to end, on memory, RabbitMQ and SNS/SQS (moto): choreography and
the saga give the same outcome; a payment failure releases the reservation and cancels
the order; a failing notification undoes nothing."""

import asyncio
import re
import subprocess
import sys

import pytest

from mailbag.broker.clock import ManualClock
from mailbag.broker.memory import MemoryBroker
from mailbag.examples.orders.choreography import build_app, place_order
from mailbag.examples.orders.events import Topics
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Notifier, Payments, Shop, sample_orders
from mailbag.examples.orders.timeline import Timeline
from mailbag.workers import Worker
from mailbag.workers.saga import Orchestrator
from mailbag.workers.saga.store import open_store
from tests.conformance.env import eventually
from tests.examples.conftest import target

ORDERS = 3
FLOW_TIMEOUT = 60.0


def shop(fail_every: int = 3) -> Shop:
    return Shop(payments=Payments(fail_every=fail_every), timeline=Timeline(expected=ORDERS))


def assert_two_confirmed_and_the_declined_one_undone(s: Shop) -> None:
    assert s.orders.status == {"order-1": "confirmed", "order-2": "confirmed", "order-3": "cancelled"}
    assert set(s.inventory.reservations) == {"order-1", "order-2"} and "order-3" in s.inventory.released
    assert s.inventory.reserved == {"book": 3, "pen": 2}
    assert set(s.payments.charges) == {"order-1", "order-2"}
    assert s.notifier.told == {"order-1": "confirmed", "order-2": "confirmed", "order-3": "cancelled"}


async def test_choreography(on):
    s, topics = shop(), Topics(on.prefix)
    async with await on.open() as broker:
        async with Worker(build_app(s, topics), broker):
            for order in sample_orders(ORDERS):
                await place_order(broker, s, order, topics)
            await asyncio.wait_for(s.timeline.all_told.wait(), FLOW_TIMEOUT)
    assert_two_confirmed_and_the_declined_one_undone(s)


async def test_saga(on, tmp_path):
    s, topics = shop(), Topics(on.prefix)
    saga = order_saga(topics)
    store = await open_store(f"sqlite:///{tmp_path / 'sagas.db'}")
    try:
        async with await on.open() as broker:
            async with Worker(build_participants(s, saga, topics), broker):
                async with Orchestrator(saga, store, broker) as orchestrator:
                    for order in sample_orders(ORDERS):
                        await orchestrator.begin(order.order_id, order.model_dump(mode="json"))
                    await asyncio.wait_for(s.timeline.all_told.wait(), FLOW_TIMEOUT)

                    async def statuses() -> dict[str, str]:
                        return {i: (await orchestrator.state(i)).status for i in ("order-1", "order-2", "order-3")}

                    async def all_ended() -> bool:  # a saga tells the customer, then saves its end
                        return set((await statuses()).values()) <= {"completed", "compensated"}

                    await eventually(all_ended, what="every saga to save its end")
                    ended = await statuses()
    finally:
        await store.close()
    assert ended == {"order-1": "completed", "order-2": "completed", "order-3": "compensated"}
    assert_two_confirmed_and_the_declined_one_undone(s)


class BrokenNotifier(Notifier):
    def tell(self, order_id: str, customer: str, outcome: str) -> bool:
        raise ConnectionError("mail server down")


@pytest.mark.parametrize("mode", ["choreography", "saga"])
async def test_a_failing_notification_never_undoes_an_order(mode, tmp_path):
    # Given a notification service that always fails (retries pass on a manual clock)
    s = shop(fail_every=0)
    s.notifier = BrokenNotifier()
    clock = ManualClock()
    broker = MemoryBroker(clock=clock)
    saga = order_saga()
    store = await open_store(f"sqlite:///{tmp_path / 'sagas.db'}")
    try:
        app = build_app(s) if mode == "choreography" else build_participants(s, saga)
        async with Worker(app, broker), Orchestrator(saga, store, broker) as orchestrator:
            # When the orders go through
            for order in sample_orders(ORDERS):
                if mode == "choreography":
                    await place_order(broker, s, order)
                else:
                    await orchestrator.begin(order.order_id, order.model_dump(mode="json"))

            async def all_notifications_dead() -> bool:
                await clock.advance(60)
                return (await broker.stats("notification.send")).dead_letters == ORDERS

            await eventually(all_notifications_dead, what="every notification in the dead-letter queue")
            ended = {i: (await orchestrator.state(i)) for i in ("order-1", "order-2", "order-3")}
    finally:
        await broker.close()
        await store.close()
    # Then every order stays confirmed, and no saga was compensated
    assert s.orders.status == {i: "confirmed" for i in ("order-1", "order-2", "order-3")}
    assert s.inventory.reserved == {"book": 6, "pen": 3} and not s.payments.refunded
    if mode == "saga":
        assert {state.status for state in ended.values()} == {"completed"}


async def test_demo_on_sqs_prints_its_timeline_as_it_happens():
    # Given the demo run on SNS/SQS, where every hop waits for a poll
    async with target("sqs") as t:
        demo = subprocess.Popen(
            [sys.executable, "-m", "mailbag.cli", "demo", "--broker", t.url, "--prefix", t.prefix],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            # When the first event of the flow is printed
            first = await asyncio.to_thread(_line_with, demo, "created")
            # Then the flow is still running: nobody has been told yet, the process goes on
            assert demo.poll() is None
            rest = await asyncio.to_thread(demo.communicate, timeout=120)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
    assert demo.returncode == 0
    assert "customer told" not in first and rest[0].count("customer told") == 3


@pytest.mark.parametrize("mode", ["choreography", "saga"])
def test_the_demo_make_run_starts_tells_its_story_and_nothing_else(mode, tmp_path):
    # When the demo runs as `make run` runs it (memory://), in either mode
    run = subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "demo", "--mode", mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Then it prints its broker line, a timeline and a summary, and no warning among them
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"broker: memory://  mode: {mode}"
    assert lines[-1].startswith("2 confirmed, 1 cancelled")
    strays = [line for line in lines[1:-1] if not re.match(r"^\s+[\d.]+ ms  ", line)]
    assert strays == [], "lines that are not part of the timeline"
    assert "WARNING" not in run.stdout + run.stderr and "no queue takes" not in run.stderr


def _line_with(process: subprocess.Popen, text: str) -> str:
    seen = ""
    while text not in seen:
        line = process.stdout.readline()
        assert line, f"the demo ended before printing {text!r}: {seen}"
        seen += line
    return seen
