"""Patience and the listening window follow each broker's redelivery timing (and what
the fault injection holds back), so a late duplicate is counted and a slow broker is
not called lossy; the report states both figures and why."""

from dataclasses import replace

import pytest

from mailbag.broker import BrokerUrlError
from mailbag.harness import Faults, FaultyBroker, Settings, Target, compare
from mailbag.harness.timing import LISTEN_MARGIN, PATIENCE_MARGIN
from tests.harness.conftest import FAST
from tests.rabbitmq.service import amqp_url


@pytest.mark.parametrize(
    "url, listen, patience, says",
    [
        ("memory://", LISTEN_MARGIN, PATIENCE_MARGIN, "at once"),
        ("amqp://h/", 20 + LISTEN_MARGIN, 20 + PATIENCE_MARGIN, "two heartbeats (10s each)"),
        ("amqp://h/?heartbeat=3&queue=quorum", 6 + LISTEN_MARGIN, 6 + PATIENCE_MARGIN, "(3s each)"),
        ("sqs://?region=eu-west-1", 30 + LISTEN_MARGIN, 30 + PATIENCE_MARGIN, "visibility timeout (30s)"),
        ("sqs://?visibility=2&wait=20&fifo=1", 2 + LISTEN_MARGIN, 20 + PATIENCE_MARGIN, "long poll (20s)"),
    ],
)
def test_defaults_follow_the_brokers_redelivery_timing(url, listen, patience, says):
    timed = Settings().timed(Target.parse(url).timing)
    assert (timed.listen, timed.patience) == (listen, patience)
    assert says in Target.parse(url).timing.why


def test_set_values_win_over_the_timing():
    timed = Settings(grace=1.5, idle_timeout=7).timed(Target.parse("sqs://?region=eu-west-1").timing)
    assert (timed.listen, timed.patience) == (1.5, 7)


def test_a_bad_timing_option_is_named_and_the_password_masked():
    with pytest.raises(BrokerUrlError) as caught:
        Target.parse("amqp://u:hunter2@h/?heartbeat=soon")
    assert "heartbeat='soon'" in str(caught.value) and "hunter2" not in str(caught.value)


def test_an_unset_window_says_how_to_set_it():
    with pytest.raises(ValueError, match=r"Settings\.timed"):
        _ = Settings().listen


@pytest.mark.parametrize("broker", ["memory", "rabbitmq"])
async def test_the_default_window_counts_every_duplicate_injected_two_seconds_late(broker):
    # Given a fault injection that sends a copy of some messages 2 s after the original
    url = "memory://" if broker == "memory" else amqp_url()
    faults = Faults(duplicate=0.3, duplicate_after=2.0, seed=11)
    injected: list[FaultyBroker] = []

    def wrap(inner, target):
        injected.append(FaultyBroker(inner, faults))
        return injected[-1]

    # When a scenario runs with the default listening window
    defaults = replace(FAST, grace=None, idle_timeout=None)
    report = await compare([Target.parse(url)], ["fan-out"], defaults, wrap=wrap)
    # Then the window covers the injection's 2 s, the report says so, and every copy is counted
    [result] = report.results
    [stated] = report.brokers
    assert stated["listen"] >= 2.0 + LISTEN_MARGIN
    assert "fault injection holds messages back up to 2s" in stated["timing"]
    copies = injected[0].injected["duplicate"]
    assert copies > 0
    assert result.duplicates == copies * FAST.fan_out_queues and result.lost == 0, result.findings

    # And a window shorter than the injection's delay would have missed them: the test can fail
    short = await compare([Target.parse(url)], ["fan-out"], replace(defaults, grace=0.3), wrap=wrap)
    assert short.results[0].duplicates < injected[1].injected["duplicate"] * FAST.fan_out_queues
