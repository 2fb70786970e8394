"""The built-in middleware, one concern per test, through a real worker on the memory
broker; and the chain protocol users write their own middleware to."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest

from mailbag.broker import Message, RetryPolicy
from mailbag.broker import headers as h
from mailbag.broker.memory import MemoryBroker
from mailbag.workers import App, BreakerPolicy, Context, RetryLater, Worker, WorkerSettings
from mailbag.workers.errors import Reject
from mailbag.workers.logs import CorrelationFilter, KeyValueFormatter
from mailbag.workers.middleware.retry import Retry
from tests.conformance.env import eventually

FAST = RetryPolicy(max_attempts=3, initial_delay=0.02, multiplier=2, max_delay=0.1)


async def _dead(broker, queue, n=1):
    return (await broker.stats(queue)).dead_letters == n


async def _idle(broker, queue):
    """Nothing ready, delayed or (where the broker counts it) held unacked."""
    s = await broker.stats(queue)
    return s.ready == 0 and not s.delayed and not s.in_flight


# -- retry --------------------------------------------------------------------------


async def _retry_outcome(middleware: Retry, error: Exception, attempt: int, **handler) -> BaseException:
    ctx = SimpleNamespace(
        handler=SimpleNamespace(**{"retry": None, "retry_on": (Exception,), **handler}), attempt=attempt, queue="q"
    )

    async def failing(_ctx):
        raise error

    with pytest.raises((RetryLater, Reject)) as caught:
        await middleware(ctx, failing)
    return caught.value


async def test_backoff_is_exponential_with_full_jitter():
    policy = RetryPolicy(max_attempts=10, initial_delay=1, multiplier=2, max_delay=30)
    retry = Retry({"q": policy})
    for attempt, ceiling in ((1, 1), (3, 4), (6, 30), (9, 30)):
        delays = [(await _retry_outcome(retry, RuntimeError("x"), attempt)).delay for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.7 * ceiling and min(delays) < 0.3 * ceiling, "not spread over [0, ceiling]"


async def test_the_handler_schedule_wins_over_the_queue_and_only_retryable_errors_retry():
    retry = Retry({"q": RetryPolicy(max_attempts=10)}, jitter=lambda ceiling: ceiling)
    own = RetryPolicy(max_attempts=2, initial_delay=5)
    assert (await _retry_outcome(retry, ConnectionError("down"), 1, retry=own)).delay == 5
    last = await _retry_outcome(retry, ConnectionError("down"), 2, retry=own)
    assert isinstance(last, Reject) and str(last) == "failed after 2 attempt(s): ConnectionError: down"
    fatal = await _retry_outcome(retry, KeyError("sku"), 1, retry_on=(ConnectionError,))
    assert isinstance(fatal, Reject) and str(fatal) == "not retryable: KeyError: 'sku'"
    assert isinstance(fatal.__cause__, KeyError)


def fast(env, max_attempts: int = 3) -> RetryPolicy:
    """Quick retries, no quicker than the broker honours."""
    delay = max(env.features.min_delay, 0.02)
    return RetryPolicy(max_attempts=max_attempts, initial_delay=delay, multiplier=1, max_delay=delay)


async def test_poison_lands_in_the_dlq_after_max_attempts_with_the_exception_text(env):
    broker, topic, queue = env.broker, env.name("orders"), env.name("orders.q")
    app = App("shop")
    tries = []

    @app.handler(topic, queue=queue, retry=fast(env))
    async def handle(payload: dict, ctx: Context) -> None:
        tries.append(ctx.attempt)
        raise ValueError(f"cannot parse sku {payload['sku']!r}")

    async with Worker(app, broker):
        await broker.publish(topic, [Message(topic, b'{"sku": "??"}')])
        await eventually(lambda: _dead(broker, queue), what="the dead letter")
    [letter] = await broker.browse(f"{queue}.dlq")
    assert tries == [1, 2, 3]
    assert letter.headers[h.DEAD_REASON] == "failed after 3 attempt(s): ValueError: cannot parse sku '??'"
    assert (letter.headers[h.ERROR_TYPE], letter.headers[h.ERROR_MESSAGE]) == ("ValueError", "cannot parse sku '??'")
    assert "raise ValueError" in letter.headers[h.TRACEBACK]


async def test_a_non_retryable_error_is_dead_lettered_at_the_first_attempt(env):
    broker, topic, queue = env.broker, env.name("orders"), env.name("orders.q")
    app = App("shop")

    @app.handler(topic, queue=queue, retry=fast(env), retry_on=(ConnectionError,))
    async def handle(payload: dict) -> None:
        raise KeyError("customer")

    async with Worker(app, broker):
        await broker.publish(topic, [Message(topic, b"{}")])
        await eventually(lambda: _dead(broker, queue), what="the dead letter")
    [letter] = await broker.browse(f"{queue}.dlq")
    assert int(letter.headers[h.ATTEMPTS]) == 1
    assert letter.headers[h.DEAD_REASON] == "not retryable: KeyError: 'customer'"
    assert letter.headers[h.ERROR_TYPE] == "KeyError"


# -- timeout --------------------------------------------------------------------------


async def test_a_handler_over_its_budget_is_cancelled_and_retried(env):
    broker, topic, queue = env.broker, env.name("orders"), env.name("orders.q")
    app = App("shop")
    tries: list[int] = []
    cancelled = asyncio.Event()
    done = asyncio.Event()

    @app.handler(topic, queue=queue, retry=fast(env), timeout=0.1)
    async def handle(payload: dict, ctx: Context) -> None:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            try:
                await asyncio.Event().wait()  # hangs past the budget
            except asyncio.CancelledError:
                cancelled.set()
                raise
        done.set()

    async with Worker(app, broker):
        await broker.publish(topic, [Message(topic, b"{}")])
        await asyncio.wait_for(done.wait(), 15)
        await eventually(lambda: _idle(broker, queue), what="the ack")
    assert cancelled.is_set() and tries == [1, 2]
    assert (await broker.stats(queue)).dead_letters == 0


# -- circuit breaker -------------------------------------------------------------------


async def test_while_the_circuit_is_open_messages_wait_without_using_attempts(env):
    # Given a handler on a flaky dependency, two attempts per message, a breaker that
    # opens after two failures for 0.3s
    broker, topic, queue = env.broker, env.name("orders"), env.name("orders.q")
    app = App("shop", breakers={"payments": BreakerPolicy(failures=2, reset_after=0.3)})
    down = True
    calls: list[tuple[str, int]] = []
    succeeded: dict[str, int] = {}
    all_done = asyncio.Event()

    @app.handler(topic, queue=queue, retry=fast(env, max_attempts=2), breaker="payments")
    async def charge(payload: dict, ctx: Context) -> None:
        nonlocal down
        calls.append((payload["n"], ctx.attempt))
        if down:
            if len(calls) == 2:
                down = False  # the outage ends as the circuit opens; the circuit does not know yet
            raise ConnectionError("payments API unreachable")
        succeeded[payload["n"]] = ctx.attempt
        if len(succeeded) == 6:
            all_done.set()

    # When six messages arrive during the outage
    async with Worker(app, broker, concurrency=1, prefetch=1):
        await broker.publish(topic, [Message(topic, b'{"n": "%d"}' % i) for i in range(6)])
        await asyncio.wait_for(all_done.wait(), 30)
        await eventually(lambda: _idle(broker, queue), what="every message settled")

    # Then the two that failed used one attempt each, the four that waited used none,
    # nothing reached the DLQ, and nothing was called while the circuit was open
    failed_first = {n for n, _ in calls[:2]}
    assert [a for _, a in calls[:2]] == [1, 1]
    assert succeeded == {n: 2 if n in failed_first else 1 for n in map(str, range(6))}
    assert len(calls) == 8
    assert (await broker.stats(queue)).dead_letters == 0


# -- correlation, logs -----------------------------------------------------------------


async def test_failure_lines_carry_ids_queue_attempt_and_error_but_no_payload(caplog):
    broker = MemoryBroker()
    app = App("shop")
    logged = asyncio.Event()

    @app.handler("orders", queue="orders.q", retry=FAST)
    async def handle(payload: dict) -> None:
        logging.getLogger("shop").warning("looking up the card")
        logged.set()
        raise RuntimeError("card service said no")

    caplog.handler.addFilter(CorrelationFilter())
    caplog.set_level(logging.INFO)
    secret = Message("orders", b'{"card": "4111-1111"}', correlation_id="checkout-7")
    async with Worker(app, broker):
        await broker.publish("orders", [secret])
        await eventually(lambda: _dead(broker, "orders.q"), what="the dead letter")
    lines = [KeyValueFormatter().format(r) for r in caplog.records]
    failures = [line for line in lines if "handler failed" in line]
    assert len(failures) == 3, "one line per failure"
    assert f"message_id={secret.id} queue=orders.q attempt=1 action=retry" in failures[0]
    assert 'error="RuntimeError: card service said no"' in failures[0]
    assert "attempt=3 action=dead-letter" in failures[2]
    own = next(line for line in lines if "looking up the card" in line)
    assert f"message_id={secret.id}" in own and "correlation_id=checkout-7" in own
    assert not any("4111" in line for line in lines)


# -- concurrency, prefetch, order ---------------------------------------------------------


async def test_concurrency_bounds_running_handlers_and_prefetch_bounds_held_messages():
    broker = MemoryBroker()
    app = App("shop")
    running = 0
    peak = 0
    gate = asyncio.Event()

    @app.handler("orders", queue="orders.q", idempotency=False)
    async def handle(payload: dict) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    await broker.declare(app.topology)
    await broker.publish("orders", [Message("orders", b"{}") for _ in range(500)])
    async with Worker(app, broker, concurrency=4, prefetch=6):
        await eventually(lambda: _in_flight(broker, 6), what="prefetch to fill")
        assert running == 4 and (await broker.stats("orders.q")).ready == 494
        gate.set()
        await eventually(lambda: _idle(broker, "orders.q"), what="the backlog to drain")
    assert peak == 4


async def _in_flight(broker, n):
    return (await broker.stats("orders.q")).in_flight == n


async def test_an_ordered_queue_runs_one_message_per_key_at_a_time_and_keys_in_parallel():
    broker = MemoryBroker()
    app = App("shop")
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    running: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    overlap = []
    keys_at_once = 0
    done = asyncio.Event()

    @app.handler("orders", queue="orders.q", ordered=True)
    async def handle(payload: dict, ctx: Context) -> None:
        nonlocal keys_at_once
        key = ctx.message.ordering_key
        running[key] += 1
        overlap.append(running[key] > 1)
        keys_at_once = max(keys_at_once, sum(1 for n in running.values() if n))
        await asyncio.sleep(0.005)
        seen[key].append(payload["i"])
        running[key] -= 1
        if sum(map(len, seen.values())) == 60:
            done.set()

    await broker.declare(app.topology)
    await broker.publish(
        "orders", [Message("orders", b'{"i": %d}' % i, ordering_key=k) for i in range(20) for k in "abc"]
    )
    async with Worker(app, broker, concurrency=6):
        await asyncio.wait_for(done.wait(), 10)
    assert not any(overlap)
    assert all(v == list(range(20)) for v in seen.values())
    assert keys_at_once == 3


# -- the protocol ------------------------------------------------------------------------


async def test_own_middleware_wraps_the_handler_inside_the_built_ins():
    broker = MemoryBroker()
    order: list[str] = []
    done = asyncio.Event()

    async def audit(ctx: Context, call_next):
        order.append(f"before {ctx.attempt}")
        try:
            return await call_next(ctx)
        finally:
            order.append("after")

    app = App("shop", middleware=[audit])

    @app.handler("orders", queue="orders.q", retry=FAST)
    async def handle(payload: dict, ctx: Context) -> str:
        order.append("handler")
        if ctx.attempt == 1:
            raise ConnectionError("flaky")
        done.set()
        return "ok"

    async with Worker(app, broker, settings=WorkerSettings(retry_jitter=False)):
        await broker.publish("orders", [Message("orders", b"{}")])
        await asyncio.wait_for(done.wait(), 5)
    # retried by the built-in retry middleware, which wraps ours: we see both tries
    assert order == ["before 1", "handler", "after", "before 2", "handler", "after"]
