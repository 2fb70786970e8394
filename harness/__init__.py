"""The comparison harness: scenarios that measure ordering, redelivery, duplicates,
loss, latency and throughput on each broker, with table and chart reports.

Its assertions are about what it measured, never tuned to one broker. Loss and
duplicates are counted in every scenario; any loss is a FAIL. `faults.FaultyBroker`
injects drops, duplicates, reordering and delays to prove every detector fires.
"""

from mailbag.harness.faults import Faults, FaultyBroker
from mailbag.harness.result import Finding, Report, ScenarioResult
from mailbag.harness.runner import compare
from mailbag.harness.scenarios import SCENARIOS
from mailbag.harness.settings import Settings
from mailbag.harness.target import Target

__all__ = [
    "SCENARIOS",
    "Faults",
    "FaultyBroker",
    "Finding",
    "Report",
    "ScenarioResult",
    "Settings",
    "Target",
    "compare",
]
