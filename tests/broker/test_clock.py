"""`ManualClock.timeout`: `asyncio.timeout` on a clock that moves only when told."""

import asyncio

import pytest

from mailbag.broker.clock import ManualClock, RealClock


async def test_a_manual_timeout_fires_when_the_clock_passes_its_deadline_and_not_before():
    clock = ManualClock()
    entered = asyncio.Event()

    async def hang() -> bool:
        async with clock.timeout(30) as scope:
            entered.set()
            await asyncio.Event().wait()
        return scope.expired()

    task = asyncio.create_task(hang())
    await entered.wait()
    await clock.advance(29.9)
    assert not task.done() and clock.next_deadline() == 30
    await clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await task


async def test_a_block_that_ends_in_time_leaves_no_alarm_behind():
    clock = ManualClock()
    async with clock.timeout(5) as scope:
        await asyncio.sleep(0)
    assert clock.next_deadline() is None and not scope.expired()
    await clock.advance(10)  # an alarm left behind would reschedule a finished scope


async def test_no_limit_and_the_real_clock_are_asyncio_timeouts():
    async with ManualClock().timeout(None) as scope:
        assert scope.when() is None
    with pytest.raises(TimeoutError):
        async with RealClock().timeout(0.01):
            await asyncio.Event().wait()
