"""The edges every broker must treat alike (DESIGN.md, "The edges too"): a publish no
queue takes, a settlement that fails, messages from plain clients, retry timing within
a documented bound, FIFO postpones, dead letters that always carry their reason."""

import asyncio
import logging

import pytest

from mailbag.broker import Message, Subscription, Unroutable
from mailbag.broker import headers as h
from mailbag.dlq import DeadLetters, NotInQueue
from mailbag.workers import App, Context, Worker
from mailbag.workers.stores import open_store
from tests.conformance.env import (
    WINDOW,
    PoisonApp,
    assert_backed_off,
    drain,
    eventually,
    mailbag_warnings,
    next_delivery,
    nothing_within,
)


def _msgs(topic: str, n: int, **kw) -> list[Message]:
    return [Message(topic=topic, body=b'{"n": %d}' % i, **kw) for i in range(n)]


# -- a publish no queue takes ------------------------------------------------------


async def test_a_publish_no_queue_takes_succeeds_is_counted_and_warned_once(env, caplog):
    # Given a declared topic no queue subscribes to
    topic = env.name("nobody")
    await env.declare(topics=(topic,))
    # When it is published to three times
    with caplog.at_level(logging.WARNING, logger="mailbag.broker"):
        for _ in range(3):
            await env.broker.publish(topic, _msgs(topic, 2))
    # Then every call succeeds, all six are counted, and one warning names the topic
    assert env.broker.unrouted.counts[topic] == 6
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and topic in r.getMessage()]
    assert len(warnings) == 1


async def test_a_mandatory_publish_no_queue_takes_raises_unroutable_naming_the_topic(env):
    topic = env.name("nobody")
    await env.declare(topics=(topic,))
    sent = _msgs(topic, 2)
    with pytest.raises(Unroutable, match=topic) as raised:
        await env.broker.publish(topic, sent, mandatory=True)
    assert raised.value.topic == topic and sorted(raised.value.message_ids) == sorted(m.id for m in sent)
    assert env.broker.unrouted.counts[topic] == 0


async def test_a_mandatory_publish_delivers_what_a_filter_takes_and_names_the_rest(env):
    # Given a queue that takes only region=eu
    topic = env.name("orders")
    eu = env.queue("eu", Subscription(topic, {"region": ("eu",)}))
    await env.declare(eu)
    taken = Message(topic, b'{"n": 1}', headers={"region": "eu"}, ordering_key="k")
    missed = Message(topic, b'{"n": 2}', headers={"region": "us"}, ordering_key="k")
    # When both are published with mandatory
    with pytest.raises(Unroutable) as raised:
        await env.broker.publish(topic, [taken, missed], mandatory=True)
    # Then the one no filter takes is named, and the other arrives
    assert raised.value.message_ids == [missed.id]
    async with env.broker.consume(eu.name) as consumer:
        [got] = await drain(consumer, 1)
        assert got.message.id == taken.id
        assert await nothing_within(consumer, 0.3)


async def test_a_publish_a_queue_takes_is_not_counted_as_unrouted(env):
    topic = env.name("orders")
    q = env.queue("taker", topic)
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 3, ordering_key="k"), mandatory=True)
    assert env.broker.unrouted.counts[topic] == 0
    async with env.broker.consume(q.name) as consumer:
        assert len(await drain(consumer, 3)) == 3


# -- a failed settlement never strands a message ---------------------------------------


async def test_a_settlement_that_fails_returns_the_message_and_the_rest_flow_on(env):
    # Given a queue whose dead-letter queue was deleted, a poison message and 100 healthy ones
    topic = env.name("orders")
    queue = env.name("settle")
    app = App(env.name("app"))
    handled: set[str] = set()

    @app.handler(topic, queue=queue, retry_on=(), idempotency=False, **env.features.queue_defaults)
    async def work(payload: dict, ctx: Context) -> None:
        if payload.get("poison"):
            raise ValueError("poison")
        handled.add(ctx.message_id)

    poison = Message(topic, b'{"poison": true}', ordering_key="poison")
    healthy = [Message(topic, b'{"n": %d}' % i, ordering_key=f"k{i % 10}") for i in range(100)]
    store = await open_store("memory://")
    async with Worker(app, env.broker, concurrency=4, prefetch=8, store=store):  # declares the topology
        await env.broker.stats(queue)  # known to the adapter before its dead-letter queue goes
        assert env.delete_queue is not None
        await env.delete_queue(app.topology.queue(queue).dead_letter_queue)
        # When they are published, and the poison one's dead-lettering fails every time
        await env.broker.publish(topic, [poison, *healthy])

        async def all_healthy_handled() -> bool:
            await env.advance(1.0)
            return handled == {m.id for m in healthy}

        # Then every healthy one is handled
        await eventually(all_healthy_handled, timeout=60, what="every healthy message handled")

    # and the poison one is back on the queue, except where the broker redrives it itself
    async def poison_back() -> bool:
        await env.advance(1.0)
        return [m.id for m in await env.broker.browse(queue, limit=10)] == [poison.id]

    if env.features.redrive_without_dead_letter_queue is None:
        await eventually(poison_back, what="the poison message back on the queue")
    else:  # it is back, or the broker redrove it towards the deleted queue
        left = [m.id for m in await env.broker.browse(queue, limit=10)]
        assert left in ([poison.id], []), env.features.redrive_without_dead_letter_queue


async def test_postpone_redelivers_after_the_delay_without_using_an_attempt(env):
    topic = env.name("orders")
    q = env.queue("postpone", topic, retry=env.policy(max_attempts=2))
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 1, ordering_key="k"))
    async with env.broker.consume(q.name) as consumer:
        first = await next_delivery(consumer)
        assert first.attempt == 1
        for _ in range(3):  # more postpones than the queue has attempts
            await first.postpone(env.features.min_delay)
            await env.advance(env.features.min_delay)
            first = await next_delivery(consumer)
            assert first.attempt == 1
        await first.retry(env.features.min_delay)
        await env.advance(env.features.min_delay)
        second = await next_delivery(consumer)
        assert (second.message.id, second.attempt) == (first.message.id, 2)
        await second.ack()


# -- retry timing within the documented bound ----------------------------------------


async def test_a_retry_comes_back_no_earlier_than_its_delay_and_within_the_bound(env):
    topic = env.name("orders")
    q = env.queue("timing", topic, retry=env.policy(max_attempts=5))
    await env.declare(q)
    await env.broker.publish(topic, _msgs(topic, 1, ordering_key="k"))
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        d = await _retried_within_the_bound(env, consumer, d, 1, 2.5)
        await d.ack()


async def _retried_within_the_bound(env, consumer, d, *multiples: float):
    """Retry `d` with each multiple of the shortest delay in turn, checking each time that
    it comes back no earlier than its delay and within the bound; returns the last."""
    loop = asyncio.get_running_loop()
    for delay in (m * (env.features.min_delay or 0.05) for m in multiples):
        # When the message is retried with this delay
        retried_at = loop.time()
        await d.retry(delay)
        if env.features.manual_clock:
            # Then (time under the test's control) it is not back a moment before the delay, and back at it
            await env.advance(delay * 0.999)
            assert await nothing_within(consumer, 0.05)
            await env.advance(delay * 0.001)
            d = await next_delivery(consumer)
            continue
        d = await next_delivery(consumer)
        waited = loop.time() - retried_at
        # Then it came back no earlier than the delay, and no later than the delay plus the bound
        assert delay <= waited <= delay + env.features.delay_bound, (delay, waited)
    return d


async def test_a_queue_deleted_with_retries_in_flight_holds_up_no_other_queues_retries(env):
    # Given 40 messages of one queue retried with a delay and still waiting it out
    gone_topic, kept_topic = env.name("gone"), env.name("kept")
    gone = env.queue("gone", gone_topic, retry=env.policy(max_attempts=3))
    kept = env.queue("kept", kept_topic, retry=env.policy(max_attempts=5))
    await env.declare(gone, kept)
    orphaned = [Message(gone_topic, b"{}", ordering_key=f"k{i}") for i in range(40)]  # none waits for another
    await env.broker.publish(gone_topic, orphaned)
    long_delay = 5 * (env.features.min_delay or 0.05)
    async with env.broker.consume(gone.name, prefetch=40) as consumer:
        for _ in orphaned:
            await (await next_delivery(consumer)).retry(long_delay)
    # When their queue is deleted before the delay is over
    assert env.delete_queue is not None
    await env.delete_queue(gone.name)
    if env.broker.orphans_queue is not None:
        # Then (where a broker keeps them) all 40 land in its catch-all, counted
        ids = {m.id for m in orphaned}

        async def kept_aside() -> bool:
            count = await env.broker.orphans()
            assert count is not None and env.broker.orphans_queue is not None
            held = await env.broker.browse(env.broker.orphans_queue, limit=count + len(ids))
            return count >= len(ids) and ids <= {m.id for m in held}

        await eventually(kept_aside, timeout=30, what="the 40 orphans in the catch-all")
    # And another queue's retries come back within the bound, as if nothing had happened
    # (on RabbitMQ the first passes the level where the 40 ended: 20 and 100 units share bit 2)
    await env.broker.publish(kept_topic, _msgs(kept_topic, 1))
    async with env.broker.consume(kept.name) as consumer:
        d = await next_delivery(consumer)
        d = await _retried_within_the_bound(env, consumer, d, 1, 2.5)
        await d.ack()


# -- messages from plain clients --------------------------------------------------------


async def _publish_plain(env, topic: str, queue: str, body: bytes, headers: dict | None = None) -> None:
    if env.plain_publish is None:  # memory:// lives in one process: the closest is a message with only a body
        await env.broker.publish(topic, [Message(topic, body, headers=headers or {})])
    else:
        await env.plain_publish(topic, queue, body, headers or {})


async def test_a_plain_message_keeps_its_topic_id_time_and_ordering_key_through_retry_dead_letter_and_replay(env):
    # Given a message from a plain client: no id, no timestamp, no content type, none of our headers
    topic = env.name("orders")
    q = env.queue("plain", topic, retry=env.policy(max_attempts=3))
    await env.declare(q)
    await _publish_plain(env, topic, q.name, b'{"order": 1}')

    async def ready() -> bool:
        return (await env.broker.stats(q.name)).ready == 1

    await eventually(ready, what="the plain message")
    [seen] = await env.broker.browse(q.name)
    async with env.broker.consume(q.name) as consumer:
        # When it is read, retried and read again
        first = await next_delivery(consumer)
        assert (first.message.topic, first.message.id, first.message.created_at) == (
            topic,
            seen.id,
            seen.created_at,
        ), "a second read of one message gives another topic, id or time"
        assert first.message.content_type == "application/json"
        assert first.message.ordering_key == env.features.plain_ordering_key
        await first.retry(env.features.min_delay)
        await env.advance(env.features.min_delay)
        second = await next_delivery(consumer)
        # Then the retried copy keeps the topic, the id, the time and the ordering key
        assert (second.message.topic, second.message.id, second.message.created_at, second.attempt) == (
            topic,
            seen.id,
            seen.created_at,
            first.attempt + 1,  # (a browse counts as a delivery on RabbitMQ and SQS)
        )
        assert second.message.ordering_key == env.features.plain_ordering_key
        await second.dead_letter("parked")
    # and so do the dead letter, and the message replayed from it
    letters = DeadLetters(env.broker, q.name)
    [record] = await letters.ls()
    assert (record.id, record.message.topic, record.message.created_at) == (seen.id, topic, seen.created_at)

    async def shown() -> bool:  # (a browse on a quorum queue puts what it saw back a moment later)
        try:
            return (await letters.show(seen.id)).id == seen.id
        except NotInQueue:
            return False

    await eventually(shown, what="the dead letter shown by its id")
    await letters.replay(all=True)
    async with env.broker.consume(q.name) as consumer:
        replayed = await next_delivery(consumer)
        assert (replayed.message.topic, replayed.message.id, replayed.attempt) == (topic, seen.id, 1)
        assert replayed.message.ordering_key == env.features.plain_ordering_key
        await replayed.ack()


# -- a dead letter always carries its reason ----------------------------------------------

#: a body this close to SQS's 1 MiB limit leaves no room for a long traceback
NEAR_LIMIT = 1_048_576 - 3_000


async def test_a_dead_letter_near_the_size_limit_carries_its_reason_with_a_trimmed_traceback(env):
    # Given a message close to the broker's size limit, and an error with a long text and traceback
    topic = env.name("orders")
    q = env.queue("big", topic)
    await env.declare(q)
    big = Message(topic, b"x" * NEAR_LIMIT, content_type="text/plain", ordering_key="k")
    await env.broker.send(q.name, [big])

    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise RuntimeError("upstream said: " + "no " * 20_000)

    try:
        deep(200)
    except RuntimeError as exc:
        error = exc
    # When it is dead-lettered
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        await d.dead_letter("payment provider refused", error)
    # Then the dead letter is there, body intact, with its reason and what fits of the error
    [record] = await DeadLetters(env.broker, q.name).ls()
    assert record.id == big.id and record.message.body == big.body
    assert record.reason == "payment provider refused" and record.error_type == "RuntimeError"


#: handler errors a dead letter must carry whatever their size: (bytes, character)
HUGE_ERRORS = [(200_000, "x"), (200_000, "é"), (2 * 1_048_576, "x"), (2 * 1_048_576, "é")]


def _carried(record) -> int:
    """UTF-8 bytes of a dead letter's text: its reason, error message and traceback."""
    return sum(len((t or "").encode()) for t in (record.reason, record.error_message, record.traceback))


@pytest.mark.parametrize(("size", "char"), HUGE_ERRORS, ids=[f"{n // 1000}kB-{c}" for n, c in HUGE_ERRORS])
async def test_a_handler_error_of_any_size_is_dead_lettered_with_its_text_and_the_connection_stays(env, size, char):
    # Given a handler that fails with an error of `size` bytes of text
    topic = env.name("orders")
    queue = env.name("huge")
    app = App(env.name("app"))
    text = char * (size // len(char.encode()))

    @app.handler(topic, queue=queue, retry_on=(), idempotency=False, **env.features.queue_defaults)
    async def work(payload: dict, ctx: Context) -> None:
        raise ValueError(text)

    letters = DeadLetters(env.broker, queue)
    async with Worker(app, env.broker, store=await open_store("memory://")):  # declares the topology
        connection = env.connection() if env.connection else None
        # When a message fails in it
        await env.broker.publish(topic, [Message(topic, b'{"n": 1}', ordering_key="k")])

        async def dead_lettered() -> bool:
            await env.advance(1.0)
            return (await env.broker.stats(queue)).dead_letters == 1

        await eventually(dead_lettered, timeout=30, what="the dead letter")
    # Then it lands in the dead-letter queue with the handler's error at the head of its
    # reason, the error's head as its text, the handler's frame in its traceback; cut and marked to fit
    [record] = await letters.ls()
    head = text[:500]
    assert record.reason.startswith(f"not retryable: ValueError: {head}"), record.reason[:100]
    assert record.error_type == "ValueError" and (record.error_message or "").startswith(head)
    assert "in work\n" in (record.traceback or "") and "bytes cut" in record.reason
    assert _carried(record) <= h.DEAD_LETTER_TEXT_MAX
    # and the broker never closed the connection (a header frame past frame_max would)
    if env.connection is not None:
        assert env.connection() is connection, "the connection was closed and opened again"
    print(
        f"{size} x {char!r}: reason {len(record.reason.encode())} B, error {len((record.error_message or '').encode())}"
        f" B, traceback {len((record.traceback or '').encode())} B, all {_carried(record)} B"
    )


async def test_a_reason_of_2_mib_passed_to_dead_letter_is_cut_to_fit_at_once(env):
    # Given a message, and a reason of 2 MiB of non-ASCII text
    topic = env.name("orders")
    q = env.queue("reason", topic)
    await env.declare(q)
    await env.broker.publish(topic, [Message(topic, b'{"n": 1}', ordering_key="k")])
    reason = "é" * 1_048_576
    connection = env.connection() if env.connection else None
    # When it is dead-lettered with that reason
    async with env.broker.consume(q.name) as consumer:
        d = await next_delivery(consumer)
        await asyncio.wait_for(d.dead_letter(reason), 10)
    # Then the reason's head is there, marked as cut, within the limit, the connection kept
    [record] = await DeadLetters(env.broker, q.name).ls()
    assert record.reason.startswith(reason[:1000]) and "bytes cut" in record.reason
    assert _carried(record) <= h.DEAD_LETTER_TEXT_MAX
    if env.connection is not None:
        assert env.connection() is connection, "the connection was closed and opened again"


# -- a message that cannot be dead-lettered backs off --------------------------------------


async def test_a_message_that_cannot_be_dead_lettered_backs_off_and_the_rest_flow_on(env, caplog):
    # Given a worker on a queue whose dead-letter queue was deleted, and a poison message
    topic = env.name("orders")
    queue = env.name("backoff")
    poisoned = PoisonApp(env.name("app"), topic, queue, **env.features.queue_defaults)
    poison = Message(topic, b'{"poison": true}', ordering_key="poison")
    early = [Message(topic, b'{"n": %d}' % i, ordering_key=f"k{i % 5}") for i in range(20)]
    late = [Message(topic, b'{"n": %d}' % i, ordering_key=f"k{i % 5}") for i in range(20, 40)]
    loop = asyncio.get_running_loop()
    app = poisoned.app
    async with Worker(app, env.broker, concurrency=4, prefetch=8, store=await open_store("memory://")):
        await env.broker.stats(queue)  # known to the adapter before its dead-letter queue goes
        assert env.delete_queue is not None
        await env.delete_queue(app.topology.queue(queue).dead_letter_queue)
        with caplog.at_level(logging.WARNING, logger="mailbag"):
            # When it is published with healthy ones, and more healthy ones come midway
            await env.broker.publish(topic, [poison, *early])
            started, elapsed, midway = loop.time(), 0.0, False

            async def window_over() -> bool:
                nonlocal elapsed, midway
                if env.features.manual_clock:
                    await env.advance(0.1)
                    elapsed += 0.1
                else:
                    elapsed = loop.time() - started
                if elapsed >= WINDOW / 2 and not midway:
                    midway = True
                    await env.broker.publish(topic, late)
                return elapsed >= WINDOW

            await eventually(window_over, timeout=WINDOW + 30, what="the window")
            runs, lines = poisoned.poison_runs, mailbag_warnings(caplog.records)

            async def all_healthy_handled() -> bool:
                await env.advance(0.1)
                return poisoned.handled == {m.id for m in early + late}

            # Then every healthy message is handled
            await eventually(all_healthy_handled, timeout=60, what="every healthy message handled")
    # and the poison one ran a bounded number of times, with one log line per return
    assert_backed_off(runs, lines)


# -- FIFO: attempts count handler runs --------------------------------------------------


async def test_a_follower_held_back_behind_a_failing_message_of_its_key_is_charged_no_attempt(env):
    # Given an ordered queue of 3 attempts; in one key the head always fails, the one after it fails once
    topic = env.name("orders")
    queue = env.name("fifo")
    app = App(env.name("app"))
    runs: list[tuple[str, int]] = []
    policy = env.policy(max_attempts=3)

    @app.handler(topic, queue=queue, retry=policy, retry_on=(RuntimeError,), idempotency=False, ordered=True)
    async def work(payload: dict, ctx: Context) -> None:
        runs.append((payload["name"], ctx.attempt))
        if payload["name"] == "head" or (payload["name"] == "follower" and ctx.attempt == 1):
            raise RuntimeError(f"{payload['name']} fails")

    store = await open_store("memory://")
    async with Worker(app, env.broker, concurrency=2, store=store):
        await env.broker.publish(
            topic, [Message(topic, b'{"name": "%s"}' % n, ordering_key="k") for n in (b"head", b"follower")]
        )

        async def follower_handled() -> bool:
            await env.advance(policy.max_delay)
            return ("follower", 2) in runs

        # When the worker runs them
        await eventually(follower_handled, timeout=60, what="the follower handled")
    # Then the head ran exactly 3 times and was dead-lettered; the follower started at attempt 1
    assert [r for r in runs if r[0] == "head"] == [("head", 1), ("head", 2), ("head", 3)]
    assert [r for r in runs if r[0] == "follower"] == [("follower", 1), ("follower", 2)]
    [record] = await DeadLetters(env.broker, queue).ls()
    assert record.attempts == 3 and "head fails" in (record.error_message or "")
