"""The harness end to end on the local RabbitMQ (classic and quorum queues), in a vhost
of this test run's own that is deleted afterwards. The crash here is real: a child
process holding unacked messages is killed with SIGKILL."""

from dataclasses import replace

import pytest

from mailbag.harness import SCENARIOS, Target, compare
from tests.harness.conftest import FAST
from tests.rabbitmq.service import amqp_url


@pytest.mark.parametrize("queue", ["classic", "quorum"])
async def test_every_scenario_runs_on_rabbitmq_without_loss(queue):
    target = Target.parse(f"{amqp_url()}?queue={queue}")
    settings = replace(FAST, retry_delay=0.2, idle_timeout=None)

    report = await compare([target], settings=settings)

    by = {r.scenario: r for r in report.results}
    assert set(by) == set(SCENARIOS)
    for r in report.results:
        assert r.error is None, f"{r.scenario}: {r.error}"
        assert r.lost == 0, f"{r.scenario}: {r.findings}"
    crash = by["crash"].metrics
    assert crash["simulated"] is False
    assert crash["came_back"] == crash["held"] == settings.crash_hold
    assert by["dead-letter"].metrics["attempts_observed"] == {str(settings.max_attempts): settings.dead_letter_messages}
    assert by["ordering"].metrics["key_violations_1"] == 0
    assert by["fan-out"].metrics["complete_queues"] == settings.fan_out_queues
    assert by["latency"].metrics["latency_ms"]["p50"] > 0
