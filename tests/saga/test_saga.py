"""The saga orchestrator on the memory broker, with deadlines and backoff on a manual
clock: happy path, failure with compensation in reverse order, compensations retried
until they succeed, step timeouts, restart, and repeated messages."""

import dataclasses

import pytest

from mailbag.broker import Message
from mailbag.broker import headers as h
from mailbag.broker.errors import MailbagError, ReservedHeader
from mailbag.broker.outgoing import outgoing
from mailbag.examples.orders.services import Inventory, Unavailable, sample_orders
from mailbag.workers.saga import SAGA, SAGA_ID, SAGA_PHASE, SAGA_STEP, Saga, Step
from tests.conformance.env import eventually


async def begin(orchestrator, count: int) -> list[str]:
    ids = []
    for order in sample_orders(count):
        await orchestrator.begin(order.order_id, order.model_dump(mode="json"))
        ids.append(order.order_id)
    return ids


async def all_end(flow, ids, status="completed", advance: float = 0.0) -> None:
    async def done() -> bool:
        if advance:
            await flow.clock.advance(advance)
        return set((await flow.statuses(*ids)).values()) == {status}

    await eventually(done, what=f"sagas {ids} to end {status}")


async def test_happy_path_runs_every_step_in_order_and_completes(flow):
    async with flow.running() as orchestrator:
        ids = await begin(orchestrator, 3)
        await all_end(flow, ids)
        await eventually(lambda: _told(flow, 3), what="three customers told")
    assert flow.of("order-1") == [
        "sent register -> orders.cmd.register",
        "register done",
        "sent reserve -> inventory.cmd.reserve",
        "reserve done",
        "sent charge -> payment.cmd.charge",
        "charge done",
        "sent confirm -> orders.cmd.confirm",
        "confirm done",
        "completed",
    ]
    assert flow.shop.orders.status == {i: "confirmed" for i in ids}
    assert flow.shop.inventory.reserved == {"book": 6, "pen": 3}
    assert flow.shop.notifier.told == {i: "confirmed" for i in ids}
    state = await orchestrator.state("order-2")
    assert state.data["payment_id"] == flow.shop.payments.charges["order-2"][0], "replies grow the saga's data"


async def _told(flow, n: int) -> bool:
    return len(flow.shop.notifier.told) == n


async def test_payment_failure_releases_inventory_then_cancels_the_order(flow):
    # Given the card of every second order is declined
    flow.shop.payments.fail_every = 2
    async with flow.running() as orchestrator:
        # When three orders go through the saga
        await begin(orchestrator, 3)
        await all_end(flow, ["order-1", "order-3"])
        await all_end(flow, ["order-2"], "compensated")
        await eventually(lambda: _told(flow, 3), what="three customers told")
    # Then order 2 undid its completed steps, newest first, and nothing for the failed charge
    undo = [w for w in flow.of("order-2") if w.startswith("compensating ")]
    assert undo == ["compensating reserve -> inventory.cmd.release", "compensating register -> orders.cmd.cancel"]
    assert flow.of("order-2")[-1] == "compensated: charge failed: PaymentFailed (card declined)"
    assert "order-2" not in flow.shop.inventory.reservations and "order-2" in flow.shop.inventory.released
    assert flow.shop.inventory.stock == {"book": 10_000 - 4, "pen": 10_000 - 2}
    assert flow.shop.orders.status["order-2"] == "cancelled"
    assert "order-2" not in flow.shop.payments.refunded, "a charge that failed needs no refund"
    assert flow.shop.notifier.told["order-2"] == "cancelled"
    assert (await orchestrator.state("order-2")).reason == "charge failed: PaymentFailed (card declined)"


class FlakyInventory(Inventory):
    """Fails to release twice: with a failed reply (`Unavailable`) or by raising."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.release_calls = 0

    def release(self, order_id: str) -> bool:
        self.release_calls += 1
        if self.release_calls <= 2:
            raise self.error
        return super().release(order_id)


@pytest.mark.parametrize(
    "error",
    [Unavailable("inventory database is down"), RuntimeError("lost the connection")],
    ids=["failed-reply", "raises"],
)
async def test_a_compensation_failing_twice_then_succeeding_ends_compensated(flow, error):
    # Given a release that fails twice, and a declined card
    flow.shop.inventory = FlakyInventory(error)
    flow.shop.payments.fail_every = 1
    async with flow.running() as orchestrator:
        # When the saga compensates (time moves one second per look: backoff passes)
        [saga_id] = await begin(orchestrator, 1)
        await all_end(flow, [saga_id], "compensated", advance=1.0)
    # Then the release was tried until it took, once, and the saga went on to cancel
    assert flow.shop.inventory.release_calls == 3
    assert flow.shop.inventory.stock == {"book": 10_000, "pen": 10_000}
    assert flow.shop.orders.status[saga_id] == "cancelled"
    retried = [w for w in flow.of(saga_id) if "compensating reserve failed" in w]
    assert len(retried) == (2 if isinstance(error, Unavailable) else 0)


async def test_a_step_that_times_out_is_compensated_including_itself(flow):
    # Given a charge command that goes nowhere (the payment service never answers)
    charge = flow.saga.steps[2]
    steps = list(flow.saga.steps)
    steps[2] = dataclasses.replace(charge, command="payment.cmd.nowhere")
    flow.saga = Saga(flow.saga.name, tuple(steps))
    async with flow.running() as orchestrator:
        [saga_id] = await begin(orchestrator, 1)
        await eventually(lambda: _waiting_on(flow, saga_id, "sent charge -> payment.cmd.nowhere"), what="the charge")
        # When the clock reaches just short of the deadline, nothing happens
        await flow.clock.advance(charge.timeout - 0.1)
        assert await orchestrator.expire() == 0
        assert (await orchestrator.state(saga_id)).status == "running"
        # When it passes the deadline (the orchestrator's timer looks too; either acts once)
        await flow.clock.advance(0.2)
        await orchestrator.expire()
        await all_end(flow, [saga_id], "compensated")
    # Then the timed-out step is undone too (its outcome is unknown), then the others, newest first
    undo = [w.split(" -> ")[0] for w in flow.of(saga_id) if w.startswith("compensating ")]
    assert undo == ["compensating charge", "compensating reserve", "compensating register"]
    assert (await orchestrator.state(saga_id)).reason == "charge timed out after 30s"
    assert flow.shop.inventory.reserved == {} and flow.shop.orders.status[saga_id] == "cancelled"


async def _waiting_on(flow, saga_id: str, what: str) -> bool:
    return what in flow.of(saga_id)


async def test_a_restarted_orchestrator_resends_what_was_outstanding(flow):
    # Given an orchestrator that began a saga whose command was lost (no participant yet)
    async with flow.running(participants=False) as first:
        [saga_id] = await begin(first, 1)
    assert (await flow.store.get(flow.saga.name, saga_id)).attempts == 1
    # When a new orchestrator starts on the same store, participants running
    async with flow.running():
        await all_end(flow, [saga_id])
    # Then it resent the register command and the saga finished
    assert "sent register -> orders.cmd.register (resent after restart)" in flow.of(saga_id)
    assert flow.shop.orders.status[saga_id] == "confirmed"


async def test_begin_twice_and_a_repeated_reply_change_nothing(flow):
    async with flow.running() as orchestrator:
        [saga_id] = await begin(orchestrator, 1)
        again = await orchestrator.begin(saga_id, {"order_id": "something else"})
        assert again.data["order_id"] == saga_id
        await all_end(flow, [saga_id])
        done = await orchestrator.state(saga_id)
        # When a stale reply (the register step's) comes in after the saga completed
        stale = Message(
            flow.saga.reply_topic,
            b'{"order_id": "order-1"}',
            type="OrderRegistered",
            headers={SAGA: flow.saga.name, SAGA_ID: saga_id, SAGA_STEP: "register", SAGA_PHASE: "do"},
        )
        await flow.broker.publish(flow.saga.reply_topic, [stale])
        await eventually(lambda: _settled(flow, flow.saga.reply_topic), what="the stale reply to be taken")
    # Then it was acked and ignored
    assert await orchestrator.state(saga_id) == done
    assert flow.of(saga_id).count("sent register -> orders.cmd.register") == 1


async def _settled(flow, queue: str) -> bool:
    s = await flow.broker.stats(queue)
    return s.ready == 0 and s.in_flight == 0


async def test_a_plain_message_on_a_command_topic_is_dead_lettered_with_why(flow):
    async with flow.running():
        await flow.broker.publish("orders.cmd.register", [Message("orders.cmd.register", b"{}")])
        await eventually(lambda: _dead(flow, "orders.commands"), what="the dead letter")
    [letter] = await flow.broker.browse("orders.commands.dlq")
    assert "payload failed validation" in letter.headers[h.DEAD_REASON]


async def _dead(flow, queue: str) -> bool:
    return (await flow.broker.stats(queue)).dead_letters == 1


async def test_the_orchestrator_builds_its_messages_like_any_publish(flow):
    # Given the orchestrator's commands carry its own x-mailbag-saga-* headers
    async with flow.running() as orchestrator:
        await begin(orchestrator, 1)
        await all_end(flow, ["order-1"])
    # When a saga message is built with a header the broker layer reads (the attempt)
    with pytest.raises(ReservedHeader) as refused:
        outgoing("inventory.cmd.reserve", {}, stamp={SAGA: "order", h.ATTEMPT: 7})
    # Then it is refused, as a MailbagError naming the header
    assert isinstance(refused.value, MailbagError) and h.ATTEMPT in str(refused.value)
    # And a participant cannot put one of the saga's own headers on a message either
    with pytest.raises(ReservedHeader):
        outgoing("orders.saga.replies", {}, headers={SAGA_ID: "order-2"})


def test_a_saga_definition_is_checked_when_built():
    with pytest.raises(ValueError, match="both compensation and compensated"):
        Step("reserve", "inventory.reserve", "Reserved", compensation="inventory.release")
    with pytest.raises(ValueError, match="unique"):
        Saga("s", (Step("a", "t", "Done"), Step("a", "t2", "Done")))
    with pytest.raises(ValueError, match="at least one step"):
        Saga("s", ())
    assert Saga("s", (Step("a", "t", "Done"),), backoff=1, max_backoff=5).retry_delay(10) == 5
