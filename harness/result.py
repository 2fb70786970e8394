"""What a scenario reports: numbers, series for the charts, findings and a verdict.

Loss and duplicates are judged here, once, for every scenario: any loss is a FAIL."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mailbag.harness.ledger import Ledger

Level = Literal["FAIL", "WARN", "INFO"]
Verdict = Literal["PASS", "WARN", "FAIL", "ERROR"]

#: how many lost ids a finding names before it says "and n more"
NAMED_IDS = 5


@dataclass(frozen=True)
class Finding:
    level: Level
    text: str


@dataclass
class ScenarioResult:
    """`metrics` are the scenario's own numbers (JSON-able); `series` the raw values
    the charts plot; `summary` one line for the table."""

    scenario: str
    broker: str
    url: str
    published: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[float]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.error is not None:
            return "ERROR"
        levels = {f.level for f in self.findings}
        return "FAIL" if "FAIL" in levels else "WARN" if "WARN" in levels else "PASS"

    def warn(self, text: str) -> None:
        self.findings.append(Finding("WARN", text))

    def fail(self, text: str) -> None:
        self.findings.append(Finding("FAIL", text))

    def note(self, text: str) -> None:
        self.findings.append(Finding("INFO", text))

    def count(self, ledger: Ledger, where: str = "") -> None:
        """Add the ledger's loss and duplicates to the totals, with findings."""
        lost = ledger.lost
        place = f" on {where}" if where else ""
        self.published += len(ledger.sent)
        self.delivered += len(ledger.sent) - len(lost)
        self.lost += len(lost)
        self.duplicates += ledger.duplicates
        if lost:
            named = ", ".join(lost[:NAMED_IDS]) + (
                f" and {len(lost) - NAMED_IDS} more" if len(lost) > NAMED_IDS else ""
            )
            self.fail(f"LOST {len(lost)} of {len(ledger.sent)} messages{place}: {named}")
        if ledger.duplicates:
            self.warn(f"{ledger.duplicates} duplicate deliveries{place} (at-least-once: handlers must be idempotent)")
        if ledger.strays:
            self.warn(f"{ledger.strays} deliveries of messages this run never published{place}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        data = {k: v for k, v in data.items() if k != "verdict"}
        data["findings"] = [Finding(**f) for f in data.get("findings", [])]
        return cls(**data)


@dataclass
class Report:
    """One comparison run: when, with which settings and brokers, and every result."""

    started: str
    settings: dict[str, Any]
    brokers: list[dict[str, Any]]
    results: list[ScenarioResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.verdict in ("FAIL", "ERROR") for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "settings": self.settings,
            "brokers": self.brokers,
            "results": [r.to_dict() for r in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            data["started"], data["settings"], data["brokers"], [ScenarioResult.from_dict(r) for r in data["results"]]
        )
