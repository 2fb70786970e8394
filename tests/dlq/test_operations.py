"""The dead-letter verbs on every broker: a poison message is listed with its reason,
replayed once the handler is fixed, and nothing is lost when a replay is cut short."""

import asyncio
from collections import Counter

import pytest

from mailbag.broker import Message
from mailbag.dlq import DeadLetters, NotInQueue, replay_file
from mailbag.workers import App, Worker
from tests.conformance.env import drain, eventually, nothing_within
from tests.dlq.conftest import dead_letter_all


def _messages(topic: str, n: int) -> list[Message]:
    return [Message(topic, b'{"n": %d}' % i, headers={"n": i}) for i in range(n)]


async def _ids_in(env, queue: str) -> Counter:
    return Counter(m.id for m in await env.broker.browse(queue, limit=1000))


async def _dead_letter_count(env, queue: str) -> int:
    return (await env.broker.stats(queue)).dead_letters


async def test_poison_is_listed_with_reason_then_replayed_once_fixed_and_handled_once(env):
    # Given a handler that fails on every order, with two attempts per message
    topic = env.name("orders")
    app = App(env.name("shop"))
    handled: list[str] = []
    broken = True

    @app.handler(topic, queue=env.name("reserve"), retry=env.policy(max_attempts=2))
    async def reserve(order: dict, ctx) -> None:
        if broken:
            raise ValueError(f"no stock for order {order['n']}")
        handled.append(ctx.message_id)

    queue = app.queues[0]
    sent = _messages(topic, 3)
    async with Worker(app, env.broker, concurrency=3):
        await env.broker.publish(topic, sent)
        for _ in range(3):  # the retry delay passes on a manual clock too
            await env.advance(env.features.min_delay)
        await eventually(lambda: _count_is(env, queue, 3), timeout=30, what="3 dead letters")
        dead = DeadLetters(env.broker, queue)

        # When the operator lists them
        listed = await dead.ls()

        # Then each shows why and how often it failed, and listing consumed nothing
        assert {r.id for r in listed} == {m.id for m in sent}
        for record in listed:
            assert "ValueError: no stock for order" in record.reason
            assert record.error_type == "ValueError" and "no stock" in record.traceback
            assert record.attempts == 2 and record.source_queue == queue
        assert await _dead_letter_count(env, queue) == 3
        assert (await dead.show(sent[1].id)).id == sent[1].id

        # When the handler is fixed and the dead letters replayed
        broken = False
        result = await dead.replay(all=True)

        # Then each is handled exactly once, with its first id, and the DLQ is empty
        assert sorted(result.done) == sorted(m.id for m in sent)
        await eventually(lambda: _handled(handled, 3), timeout=30, what="3 handled")
        assert Counter(handled) == Counter(m.id for m in sent)
        assert await _dead_letter_count(env, queue) == 0


async def _count_is(env, queue: str, n: int) -> bool:
    return await _dead_letter_count(env, queue) == n


async def _handled(handled: list, n: int) -> bool:
    return len(handled) >= n


async def test_replay_by_id_and_where_moves_only_the_chosen_and_keeps_the_rest(env):
    q = env.queue("pick")
    await env.declare(q)
    sent = await dead_letter_all(env.broker, q.name, _messages("orders", 6))
    dead = DeadLetters(env.broker, q.name)

    by_id = await dead.replay(ids=[sent[0].id, "no-such-id"])
    by_where = await dead.replay(where='headers["n"] in (2, 3, "2", "3")')  # a broker may carry numbers as text

    assert by_id.done == [sent[0].id] and by_id.missing == ["no-such-id"]
    assert sorted(by_where.done) == sorted(m.id for m in sent[2:4])
    assert await _ids_in(env, q.name) == Counter(m.id for m in (sent[0], sent[2], sent[3]))
    assert await _ids_in(env, q.dead_letter_queue) == Counter(m.id for m in (sent[1], sent[4], sent[5]))


async def test_replay_to_another_queue_resets_attempts_and_strips_the_death_headers(env):
    q, repair = env.queue("orig"), env.queue("repair")
    await env.declare(q, repair)
    [first] = await dead_letter_all(env.broker, q.name, _messages("orders", 1))

    await DeadLetters(env.broker, q.name).replay(all=True, to=repair.name)

    async with env.broker.consume(repair.name) as consumer:
        [delivery] = await drain(consumer, 1)
    assert delivery.attempt == 1
    assert (delivery.message.id, delivery.message.body, delivery.message.headers) == (
        first.id,
        first.body,
        first.headers,
    )
    assert await _dead_letter_count(env, q.name) == 0


class _KilledAfterSend:
    """The broker, except that the `nth` send dies right after it was confirmed, before
    the replay can ack anything: the worst moment to be killed."""

    def __init__(self, broker, nth: int) -> None:
        self._broker, self._nth, self._sends = broker, nth, 0

    def __getattr__(self, name: str):
        return getattr(self._broker, name)

    async def send(self, queue, messages):
        await self._broker.send(queue, messages)
        self._sends += 1
        if self._sends == self._nth:
            raise asyncio.CancelledError


async def test_replay_killed_between_confirm_and_ack_loses_nothing(env):
    # Given 20 dead letters
    q = env.queue("killed")
    await env.declare(q)
    sent = await dead_letter_all(env.broker, q.name, _messages("orders", 20))

    # When the replay dies after its second batch of 5 was confirmed, before the ack
    with pytest.raises(asyncio.CancelledError):
        await DeadLetters(_KilledAfterSend(env.broker, nth=2), q.name).replay(all=True, batch=5)

    # Then every message is somewhere; only the interrupted batch is in both places
    async def settled() -> bool:
        return sum((await _ids_in(env, q.name) + await _ids_in(env, q.dead_letter_queue)).values()) == 25

    await eventually(settled, timeout=60, what="the cut-short replay's messages back in the DLQ")
    queue_ids, dead_ids = await _ids_in(env, q.name), await _ids_in(env, q.dead_letter_queue)
    assert set(queue_ids) | set(dead_ids) == {m.id for m in sent}
    assert len(queue_ids) == 10 and len(dead_ids) == 15 and len(set(queue_ids) & set(dead_ids)) == 5

    # When the replay runs again to the end
    await DeadLetters(env.broker, q.name).replay(all=True)

    # Then the DLQ is empty and the queue holds each id, five of them twice (same id: dropped by idempotency)
    assert await _ids_in(env, q.dead_letter_queue) == Counter()
    queue_ids = await _ids_in(env, q.name)
    assert set(queue_ids) == {m.id for m in sent} and sum(queue_ids.values()) == 25


async def test_replay_task_cancelled_mid_way_loses_nothing(env):
    q = env.queue("cancel")
    await env.declare(q)
    sent = await dead_letter_all(env.broker, q.name, _messages("orders", 30))

    replay = asyncio.create_task(DeadLetters(env.broker, q.name).replay(all=True, rate=50, batch=5))
    await eventually(lambda: _at_least(env, q.name, 5), timeout=30, what="a first replayed batch")
    replay.cancel()
    with pytest.raises(asyncio.CancelledError):
        await replay

    async def settled() -> bool:
        ids = await _ids_in(env, q.name) + await _ids_in(env, q.dead_letter_queue)
        return set(ids) == {m.id for m in sent}

    await eventually(settled, timeout=60, what="every message in the queue or the DLQ")
    assert 0 < sum((await _ids_in(env, q.name)).values()) < 30


async def _at_least(env, queue: str, n: int) -> bool:
    return (await env.broker.stats(queue)).ready >= n


async def test_export_purge_and_replay_from_file_handles_each_once_byte_identical(env, tmp_path):
    # Given dead letters with bodies and headers of every kind
    q = env.queue("export")
    await env.declare(q)
    originals = [
        Message(
            "orders", '{"note": "café ☕"}'.encode(), headers={"tenant": "acme", "priority": 5}, correlation_id="c1"
        ),
        Message("orders", bytes(range(200)), content_type="application/octet-stream", type="Blob", ordering_key="k"),
        Message("orders", b" ", headers={"flag": True, "ratio": 0.25}, causation_id="cause"),  # SQS takes no empty body
    ]
    first_seen = await dead_letter_all(env.broker, q.name, originals)
    dead = DeadLetters(env.broker, q.name)
    path = tmp_path / "dead.jsonl"

    # When they are exported, purged, and replayed from the file
    assert await dead.export(path) == 3
    assert await _dead_letter_count(env, q.name) == 3  # exporting consumed nothing
    assert (await dead.purge(all=True)).removed == 3
    await eventually(lambda: _count_is(env, q.name, 0), what="an empty DLQ after purge")
    sent = await replay_file(env.broker, path)

    # Then each comes back once, exactly as it was first delivered
    assert sorted(sent) == sorted(m.id for m in originals)
    async with env.broker.consume(q.name) as consumer:
        got = {d.message.id: d.message for d in await drain(consumer, 3)}
        assert await nothing_within(consumer, 0.3)
    for before in first_seen:
        after = got[before.id]
        assert after.body == before.body and after.headers == before.headers
        assert (after.content_type, after.type, after.correlation_id, after.causation_id, after.ordering_key) == (
            before.content_type,
            before.type,
            before.correlation_id,
            before.causation_id,
            before.ordering_key,
        )


async def test_purge_by_id_removes_only_those(env):
    q = env.queue("purge")
    await env.declare(q)
    sent = await dead_letter_all(env.broker, q.name, _messages("orders", 4))
    dead = DeadLetters(env.broker, q.name)

    result = await dead.purge(ids=[sent[1].id, sent[2].id])

    assert sorted(result.done) == sorted([sent[1].id, sent[2].id])
    assert await _ids_in(env, q.dead_letter_queue) == Counter([sent[0].id, sent[3].id])
    with pytest.raises(NotInQueue):
        await dead.show(sent[1].id)


async def test_selection_must_be_explicit(env):
    q = env.queue("explicit")
    await env.declare(q)
    dead = DeadLetters(env.broker, q.name)
    with pytest.raises(ValueError, match="say which messages"):
        await dead.replay()
    with pytest.raises(ValueError, match="not both"):
        await dead.purge(ids=["a"], all=True)
