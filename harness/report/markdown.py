"""`index.md`: the run as a page: brokers, a verdict matrix, what each scenario
measured, what it means (criteria and advice, `advice`), every finding (losses first)
and the charts embedded."""

from __future__ import annotations

from pathlib import Path

from mailbag.broker.files import write_file
from mailbag.harness.report import advice
from mailbag.harness.result import Report
from mailbag.harness.scenarios import SCENARIOS

FILE = "index.md"

CAPTIONS = {
    "latency": "Latency distribution per broker",
    "ordering": "Order violations per key, and global inversions",
    "redelivery": "Redelivery positions and delays",
    "crash": "Crash: when a killed consumer's messages came back",
    "throughput": "Throughput",
}
_RANK = {"FAIL": 0, "WARN": 1, "INFO": 2}


def render(report: Report, images: list[str]) -> str:
    brokers = [b["label"] for b in report.brokers]
    scenarios = list(dict.fromkeys(r.scenario for r in report.results))
    by = {(r.scenario, r.broker): r for r in report.results}
    lines = [
        "# Broker comparison",
        "",
        f"Run started {report.started}. {report.settings['messages']} messages per scenario over "
        f"{report.settings['keys']} ordering keys, {report.settings['consumers']} competing consumers where a "
        f"scenario uses several, retry delay {report.settings['retry_delay']:g}s. "
        "Raw numbers: [results.json](results.json).",
        "",
        "Patience: how long without any delivery before what is missing counts as lost. Listened: how long "
        "after the last message a late duplicate still counts. Unless set (`--patience`, `--listen`), both "
        "follow the broker's redelivery timing.",
        "",
        "| broker | URL | patience | listened | timing |",
        "|---|---|---|---|---|",
        *(
            f"| {b['label']} | `{b['url']}` | {_seconds(b, 'patience')} | {_seconds(b, 'listen')} | "
            f"{b.get('timing', '-')} |"
            for b in report.brokers
        ),
        "",
        "## Verdicts",
        "",
        "Any lost message is a FAIL. WARN marks duplicates, or a promise (order, delay, attempts) not kept.",
        "",
        "| scenario | " + " | ".join(brokers) + " |",
        "|---|" + "---|" * len(brokers),
    ]
    for s in scenarios:
        cells = [_verdict(by.get((s, b))) for b in brokers]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    for s in scenarios:
        title = SCENARIOS[s].TITLE if s in SCENARIOS else s
        lines += [
            "",
            f"## {s}: {title}",
            "",
            "| broker | verdict | lost | duplicates | measured |",
            "|---|---|---|---|---|",
        ]
        for b in brokers:
            r = by.get((s, b))
            if r is not None:
                lines.append(f"| {b} | {_verdict(r)} | {r.lost} | {r.duplicates} | {r.error or r.summary} |")
    lines += ["", *advice.render(report)]
    findings = sorted(
        ((f.level, r.broker, r.scenario, f.text) for r in report.results for f in r.findings),
        key=lambda item: _RANK[item[0]],
    )
    if findings:
        lines += ["", "## Findings", ""]
        lines += [f"- **{level}** {broker} / {scenario}: {text}" for level, broker, scenario, text in findings]
    if images:
        lines += ["", "## Charts"]
        for image in images:
            stem = Path(image).stem
            lines += ["", f"### {CAPTIONS.get(stem, stem)}", "", f"![{CAPTIONS.get(stem, stem)}]({image})"]
    return "\n".join(lines) + "\n"


def _seconds(broker: dict, key: str) -> str:
    return f"{broker[key]:g}s" if key in broker else "-"


def _verdict(result) -> str:
    if result is None:
        return "-"
    return f"**{result.verdict}**" if result.verdict in ("FAIL", "ERROR") else result.verdict


def save(report: Report, images: list[str], path: Path) -> Path:
    return write_file(path, render(report, images))
