"""Every detector proven to fire: each fault the `FaultyBroker` injects on memory is
seen by the scenarios, counted exactly where the count is knowable, and judged.
And with no fault injected, nothing fires."""

from dataclasses import replace

import pytest

from mailbag.broker.memory import MemoryBroker
from mailbag.harness import SCENARIOS, Faults, FaultyBroker, Target
from mailbag.harness.ledger import NoMeter
from tests.harness.conftest import FAST

PLAIN = Target.parse("memory://")
ORDERED = Target.parse("memory://?ordered=1")


async def run(scenario: str, faults: Faults, target: Target = PLAIN, settings=FAST):
    broker = FaultyBroker(MemoryBroker(), faults)
    try:
        result = await SCENARIOS[scenario].run(broker, target, settings, NoMeter())
    finally:
        await broker.close()
    return result, broker.injected


def copies(scenario: str) -> int:
    """How many queues each published message is expected on."""
    return FAST.fan_out_queues if scenario == "fan-out" else 1


@pytest.mark.parametrize("target", [PLAIN, ORDERED], ids=lambda t: t.label)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_without_faults_nothing_fires(scenario, target):
    result, _ = await run(scenario, Faults(), target)
    assert result.verdict == "PASS", result.findings
    assert (result.lost, result.duplicates) == (0, 0)
    assert result.published == result.delivered > 0


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_dropped_messages_are_counted_as_loss_and_fail(scenario):
    result, injected = await run(scenario, Faults(drop=0.15, seed=3))
    assert injected["drop"] > 0
    assert result.lost == injected["drop"] * copies(scenario)
    assert result.verdict == "FAIL"
    assert any(f.level == "FAIL" and f.text.startswith("LOST") for f in result.findings)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_duplicated_messages_are_counted_in_every_scenario(scenario):
    result, injected = await run(scenario, Faults(duplicate=0.15, seed=4))
    assert injected["duplicate"] > 0
    assert result.duplicates == injected["duplicate"] * copies(scenario)
    assert result.lost == 0
    assert result.verdict == "WARN"
    assert any("duplicate deliveries" in f.text for f in result.findings)


@pytest.mark.parametrize("target", [PLAIN, ORDERED], ids=lambda t: t.label)
async def test_reordering_shows_as_order_violations_and_inversions(target):
    clean, _ = await run("ordering", Faults(), target)
    assert clean.metrics["key_violations_1"] == 0 and clean.metrics["inversions_1"] == 0

    result, injected = await run("ordering", Faults(reorder=0.2, seed=5), target)

    assert injected["reorder"] > 0
    assert result.metrics["key_violations_1"] > 0
    assert result.metrics["inversions_1"] > 0
    promised = any("promises order per key" in f.text for f in result.findings)
    assert promised == target.ordered  # only a queue that promised order is warned about


async def test_competing_consumers_on_a_plain_queue_break_order_per_key():
    # Given handling that takes a random time, and a queue that does not promise order
    slow = replace(FAST, keys=2, messages=60, jitter=0.005)
    # When three consumers compete for it
    result, _ = await run("ordering", Faults(), PLAIN, slow)
    # Then some messages of a key finish before earlier ones; one consumer keeps order
    assert result.metrics["key_violations_3"] > 0
    assert result.metrics["key_violations_1"] == 0
    assert result.verdict == "PASS"  # nothing was promised


async def test_delayed_messages_raise_the_latency_tail():
    result, injected = await run("latency", Faults(delay=0.1, delay_seconds=0.3, seed=6))
    assert injected["delay"] > 0
    latency = result.metrics["latency_ms"]
    assert latency["max"] >= 300
    assert latency["p50"] < 300
    assert result.lost == 0


async def test_late_redelivery_is_reported_against_the_delay_asked():
    result, injected = await run("redelivery", Faults(delay=1.0, delay_seconds=0.3, seed=7))
    assert injected["delay"] > 0
    assert min(result.series["delays"]) >= FAST.retry_delay + 0.3
    assert any("came back late" in f.text for f in result.findings)
    assert result.verdict == "WARN"


async def test_redelivery_reports_position_attempt_and_delay():
    result, _ = await run("redelivery", Faults())
    retried = len(range(0, FAST.messages, FAST.retry_every))
    assert result.metrics["retried"] == result.metrics["came_back"] == retried
    assert result.metrics["comeback_attempts"] == {"2": retried}
    assert all(d >= FAST.retry_delay for d in result.series["delays"])
    assert len(result.series["positions"]) == retried


async def test_messages_lost_in_a_crash_are_reported():
    result, injected = await run("crash", Faults(drop=0.3, seed=8))
    assert injected["drop"] > 0
    assert result.metrics["came_back"] < result.metrics["held"]
    assert any("never came back" in f.text for f in result.findings)
    assert result.verdict == "FAIL"


async def test_a_crash_on_memory_is_simulated_and_says_so():
    result, _ = await run("crash", Faults())
    assert result.metrics["simulated"] is True
    assert result.metrics["came_back"] == result.metrics["held"] == FAST.crash_hold
    assert any("simulated crash" in f.text for f in result.findings)


async def test_extra_attempts_before_the_dlq_are_reported_against_the_policy():
    # a duplicated message is tried once per copy: twice the policy's attempts
    result, injected = await run("dead-letter", Faults(duplicate=0.5, seed=9))
    assert injected["duplicate"] > 0
    assert f"tried {2 * FAST.max_attempts} times before the DLQ" in " ".join(f.text for f in result.findings)


async def test_fan_out_names_the_queue_that_missed_messages():
    result, _ = await run("fan-out", Faults(drop=0.1, seed=10))
    assert result.metrics["complete_queues"] < result.metrics["queues"]
    lost_on = [f.text for f in result.findings if f.level == "FAIL"]
    assert len(lost_on) == FAST.fan_out_queues and all("-0" in t or "-1" in t or "-2" in t for t in lost_on)
