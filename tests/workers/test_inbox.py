"""The hand-off between a worker's fetchers and its runners: one idle runner woken at
a time, and no delivery left behind when a woken runner is cancelled."""

import asyncio

from mailbag.workers.runtime import _Inbox


async def _runners(inbox: _Inbox, n: int, taken: list) -> list[asyncio.Task]:
    async def run(i: int) -> None:
        while True:
            taken.append((i, await inbox.get()))

    tasks = [asyncio.create_task(run(i)) for i in range(n)]
    await asyncio.sleep(0)  # every runner reaches its wait
    return tasks


async def test_a_burst_wakes_one_runner_which_takes_it_all_when_handling_never_waits():
    inbox, taken = _Inbox(), []
    tasks = await _runners(inbox, 4, taken)
    for n in range(5):
        inbox.put(n)
    for _ in range(3):
        await asyncio.sleep(0)
    assert [item for _, item in taken] == [0, 1, 2, 3, 4]
    assert {runner for runner, _ in taken} == {0}
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_runner_cancelled_after_it_was_woken_passes_its_turn_on():
    inbox, taken = _Inbox(), []
    tasks = await _runners(inbox, 3, taken)
    inbox.put("a")  # wakes runner 0 ...
    tasks[0].cancel()  # ... which is cancelled before it runs
    await asyncio.gather(tasks[0], return_exceptions=True)
    for _ in range(3):
        await asyncio.sleep(0)
    assert [item for _, item in taken] == ["a"]
    assert taken[0][0] != 0
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
