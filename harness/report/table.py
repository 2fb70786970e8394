"""The terminal table: one row per scenario and broker, verdicts in colour, and every
loss repeated underneath so it cannot be missed."""

from __future__ import annotations

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mailbag.harness.result import Report

STYLE = {"PASS": "bold green", "WARN": "bold yellow", "FAIL": "bold white on red", "ERROR": "bold white on red"}


def render(report: Report) -> Group:
    table = Table(title="mailbag compare", show_lines=False)
    for column in ("scenario", "broker", "verdict", "lost", "dups", "measured", "s"):
        table.add_column(column, justify="right" if column in ("lost", "dups", "s") else "left")
    scenarios = list(dict.fromkeys(r.scenario for r in report.results))
    previous = None
    for r in sorted(report.results, key=lambda r: scenarios.index(r.scenario)):
        if previous is not None and r.scenario != previous:
            table.add_section()
        previous = r.scenario
        table.add_row(
            r.scenario,
            r.broker,
            Text(r.verdict, style=STYLE[r.verdict]),
            Text(str(r.lost), style="bold red" if r.lost else ""),
            str(r.duplicates),
            r.error or r.summary,
            f"{r.seconds:.1f}",
        )
    parts: list = [table]
    timing = [
        f"{b['label']}: patience {b['patience']:g}s, listened {b['listen']:g}s ({b['timing']})"
        for b in report.brokers
        if "timing" in b
    ]
    if timing:
        parts.append(Panel("\n".join(timing), title="how long the run waited", style="dim"))
    alarms = [
        f"{r.verdict} {r.broker} / {r.scenario}: {f.text}"
        for r in report.results
        for f in r.findings
        if f.level == "FAIL"
    ] + [f"ERROR {r.broker} / {r.scenario}: {r.error}" for r in report.results if r.error]
    if alarms:
        parts.append(Panel("\n".join(alarms), title="MESSAGES LOST OR SCENARIOS FAILED", style="bold red"))
    warnings = [f"{r.broker} / {r.scenario}: {f.text}" for r in report.results for f in r.findings if f.level == "WARN"]
    if warnings:
        parts.append(Panel("\n".join(warnings), title="warnings", style="yellow"))
    return Group(*parts)
