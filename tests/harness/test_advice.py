"""The advice never contradicts itself: a broker that lost messages is named with the
count and recommended nowhere, whatever its other numbers look like."""

from collections.abc import Sequence

from mailbag.broker import Broker, Message
from mailbag.broker.delegating import Delegating
from mailbag.harness import Target, compare
from mailbag.harness.report import advice
from tests.harness.conftest import FAST


class Dropping(Delegating):
    """Confirms every publish and delivers none of it: a broker that loses everything."""

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        return None

    async def send(self, queue: str, messages: Sequence[Message], *, delay: float = 0.0) -> None:
        return None


def drop_on(label: str):
    def wrap(broker: Broker, target: Target) -> Broker:
        return Dropping(broker) if target.label == label else broker

    return wrap


def advice_lines(report) -> list[str]:
    """The bullets under "Which to pick"."""
    page = advice.render(report)
    return [line.removeprefix("- ") for line in page[page.index("### Which to pick") :] if line.startswith("- ")]


async def test_a_broker_that_lost_everything_is_named_with_the_count_and_never_recommended():
    # Given two ordered memory brokers, one of which drops every message it confirms
    targets = [Target.parse("memory://?ordered=1&label=sound"), Target.parse("memory://?ordered=1&label=dropper")]
    # When every scenario runs on both
    report = await compare(targets, settings=FAST, wrap=drop_on("dropper"))
    # Then the dropper delivered nothing, so its zero order violations mean nothing
    dropped = [r for r in report.results if r.broker == "dropper"]
    assert all(r.delivered == 0 and r.lost == r.published > 0 for r in dropped), [r.summary for r in dropped]
    lines = advice_lines(report)
    # And the advice names it as lost, with the count
    lost = sum(r.lost for r in dropped)
    assert lines[0] == f"Do not use as configured: dropper lost {lost} message(s)."
    # And recommends only the broker that delivered everything, never the dropper
    [order] = [line for line in lines if line.startswith("Need per-key order")]
    assert order.startswith("Need per-key order with 3 competing consumers: use sound (0 violations")
    assert order.endswith(f"; not judged: dropper (lost {lost} message(s)).")
    for line in lines[1:]:
        assert "dropper" not in line.split("; not judged:")[0], line
    assert not any(line.startswith("Passed every scenario") and "dropper" in line for line in lines)


async def test_with_no_broker_that_delivered_everything_no_order_is_advised():
    report = await compare(
        [Target.parse("memory://?ordered=1&label=dropper")], ["ordering"], FAST, wrap=drop_on("dropper")
    )
    [order] = [line for line in advice_lines(report) if "per-key order" in line]
    assert "no broker here delivered every message, so none is advised" in order
    assert "use dropper" not in order
