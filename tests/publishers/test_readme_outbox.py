"""The README's outbox snippet runs as written, in a fresh directory, and leaves one
pending event the relay's status reports."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def snippet() -> str:
    """The first python block after the outbox's introduction in the README."""
    text = README.read_text()
    start = text.index("When an event must follow a database change")
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_readme_outbox_snippet_runs_as_written(tmp_path):
    # When the snippet runs in an empty directory (no table, no database yet)
    ran = subprocess.run([sys.executable, "-c", snippet()], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    # Then the event waits in the outbox for the relay
    status = subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "outbox", "status", "--db", f"sqlite:///{tmp_path}/shop.db"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.stdout.startswith("pending 1  failing 0  sent 0"), status.stderr
