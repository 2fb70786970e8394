"""Every Python block in README.md runs, in order, as a reader would paste them into
one async session (top-level `await` allowed), in an empty folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


async def test_every_python_block_in_the_readme_runs(tmp_path, monkeypatch):
    # Given the README's Python blocks
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}

    # When each runs in turn in one namespace
    for number, source in enumerate(blocks, 1):
        code = compile(source, f"README.md python block {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if result is not None:
            await result

    # Then none raised, and what they made is there
    assert "app" in namespace and "publisher" in namespace and "saga" in namespace
    await namespace["broker"].close()
