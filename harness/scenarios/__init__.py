"""The scenarios, one module each, in the order a run goes through them. Each module
has `NAME`, `TITLE` and `async run(broker, target, settings, meter) -> ScenarioResult`;
each counts duplicates and loss through its ledger."""

from __future__ import annotations

from types import ModuleType

from mailbag.harness.scenarios import crash, dead_letter, fan_out, latency, ordering, redelivery

SCENARIOS: dict[str, ModuleType] = {
    module.NAME: module for module in (ordering, redelivery, crash, dead_letter, fan_out, latency)
}
