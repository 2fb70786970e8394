"""The JSON record of a run: everything measured, so charts and write-ups can be
redrawn from it later."""

from __future__ import annotations

import json
from pathlib import Path

from mailbag.broker.files import write_file
from mailbag.harness.result import Report

FILE = "results.json"


def save(report: Report, path: Path) -> Path:
    return write_file(path, json.dumps(report.to_dict(), indent=2) + "\n")


def load(path: Path) -> Report:
    return Report.from_dict(json.loads(path.read_text()))
