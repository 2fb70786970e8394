"""The JSON record of a run: everything measured, so charts and write-ups can be
redrawn from it later."""

from __future__ import annotations

import json
from pathlib import Path

from mailbag.harness.result import Report

FILE = "results.json"


def save(report: Report, path: Path) -> Path:
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return path


def load(path: Path) -> Report:
    return Report.from_dict(json.loads(path.read_text()))
