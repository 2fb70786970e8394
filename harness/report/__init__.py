"""Reports of a comparison run: the JSON record, the terminal table, PNG charts and an
`index.md` that embeds them. `write` puts all the files in one directory."""

from __future__ import annotations

from pathlib import Path

from mailbag.harness.report import charts, data, markdown
from mailbag.harness.report.table import render
from mailbag.harness.result import Report


def write(report: Report, out: Path) -> list[Path]:
    """Write results.json, the charts and index.md into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [data.save(report, out / data.FILE)]
    images = charts.draw(report, out)
    written += images
    written.append(markdown.save(report, [p.name for p in images], out / markdown.FILE))
    return written


__all__ = ["render", "write"]
