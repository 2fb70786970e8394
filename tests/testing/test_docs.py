"""docs/testing.md: every Python block is a user's test module, and they all pass
under plain `pytest` outside the repository (as `test_plugin.py` runs them)."""

import re
from pathlib import Path

from tests.testing.test_plugin import plain_pytest

DOC = Path(__file__).parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_every_python_block_of_the_testing_guide_passes(tmp_path):
    # Given each Python block of the guide as a test module of its own
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) >= 5, "a handler, a retry to the DLQ, a duplicate, a saga, a Lambda batch"
    for i, block in enumerate(blocks):
        (tmp_path / f"test_guide_{i}.py").write_text(block)
    tests = sum(len(re.findall(r"^(async )?def test_", b, re.M)) for b in blocks)
    # When plain pytest runs them
    run = plain_pytest(tmp_path)
    # Then every test in them passed
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{tests} passed" in run.stdout, run.stdout
