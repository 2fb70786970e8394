"""Running the chosen scenarios on each broker variant, one after the other, into a
`Report`. A scenario that errors is recorded as ERROR and the run goes on."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from mailbag.broker import Broker
from mailbag.broker.delegating import Declaring
from mailbag.harness.faults import FaultyBroker
from mailbag.harness.ledger import Meter, NoMeter
from mailbag.harness.result import Report, ScenarioResult
from mailbag.harness.scenarios import SCENARIOS
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target

#: no scenario may take longer than this, whatever the broker does
SCENARIO_TIMEOUT = 600.0


class Progress(Protocol):
    def begin(self, broker: str, scenario: str) -> Meter: ...

    def end(self, result: ScenarioResult) -> None: ...


class Silent:
    def begin(self, broker: str, scenario: str) -> Meter:
        return NoMeter()

    def end(self, result: ScenarioResult) -> None:
        pass


async def compare(
    targets: Sequence[Target],
    scenarios: Sequence[str] = tuple(SCENARIOS),
    settings: Settings = Settings(),
    *,
    progress: Progress | None = None,
    wrap: Callable[[Broker, Target], Broker] | None = None,
) -> Report:
    """Run `scenarios` on every target; `wrap` decorates each opened broker (the tests
    wrap it in a `FaultyBroker`, or a broker of their own). Patience and the listening
    window not set in `settings` follow each broker's timing (`Target.timing`, plus what
    a `FaultyBroker` holds back), and the report says which and why. What a scenario
    declared is removed when it ends, once its consumers are closed and what the fault
    injection held back has gone out."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    progress = progress or Silent()
    report = Report(
        started=datetime.now(UTC).isoformat(timespec="seconds"),
        settings=dataclasses.asdict(settings),
        brokers=[{"label": t.label, "url": t.display} for t in targets],
    )
    for target, entry in zip(targets, report.brokers):
        timing = target.timing
        try:
            opened = await target.open()
        except Exception as exc:
            for name in scenarios:
                report.results.append(_error(name, target, exc))
            continue
        wrapped = opened if wrap is None else wrap(opened, target)
        faulty = wrapped if isinstance(wrapped, FaultyBroker) else None
        if faulty is not None:
            timing = timing.held_back(faulty.lateness, "fault injection holds messages back up to")
        timed = settings.timed(timing)
        entry.update(patience=timed.patience, listen=timed.listen, timing=timing.why)
        broker = Declaring(wrapped)
        try:
            for name in scenarios:
                meter = progress.begin(target.label, name)
                started = time.monotonic()
                try:
                    result = await asyncio.wait_for(SCENARIOS[name].run(broker, target, timed, meter), SCENARIO_TIMEOUT)
                except Exception as exc:
                    result = _error(name, target, exc)
                finally:
                    if faulty is not None:
                        await faulty.settle()
                    await broker.remove_declared()
                result.seconds = time.monotonic() - started
                report.results.append(result)
                progress.end(result)
        finally:
            await broker.close()
    return report


def _error(scenario: str, target: Target, exc: BaseException) -> ScenarioResult:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, asyncio.TimeoutError):
        text = f"gave up after {SCENARIO_TIMEOUT:g}s"
    return ScenarioResult(scenario, target.label, target.display, error=f"{type(exc).__name__}: {text}".rstrip(": "))
