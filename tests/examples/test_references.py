"""Every place the docs and docstrings name the example app (`mailbag worker
mailbag.examples.orders.app:app`, `python -m mailbag.examples...`) names it as an
installed user reaches it: through the `mailbag` package, from any folder."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: a dotted module path through `examples`, with an optional `:attribute`
REFERENCE = re.compile(r"(?<![\w./])((?:\w+\.)?examples(?:\.\w+)+)(?::(\w+))?")


def references() -> dict[tuple[str, str | None], list[str]]:
    found: dict[tuple[str, str | None], list[str]] = {}
    texts = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").rglob("*.py")]
    texts += [*(ROOT / "mailbag").rglob("*.py")]
    for path in texts:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for module, attribute in REFERENCE.findall(line):
                found.setdefault((module, attribute or None), []).append(f"{path.relative_to(ROOT)}:{number}")
    return found


def test_the_example_app_is_named_through_the_mailbag_package():
    found = references()
    assert ("mailbag.examples.orders.app", "app") in found
    wrong = {module: where for (module, _), where in found.items() if not module.startswith("mailbag.examples.")}
    assert wrong == {}


def test_every_named_example_module_and_app_imports_outside_the_repository(tmp_path):
    # Given every example module (and app attribute) the docs name
    named = sorted(references(), key=str)
    checks = "\n".join(
        f"import importlib; m = importlib.import_module({module!r}); getattr(m, {attribute!r})"
        if attribute
        else f"import importlib; importlib.import_module({module!r})"
        for module, attribute in named
    )
    # When a Python in an empty folder, with no path into the repository, imports them
    run = subprocess.run([sys.executable, "-I", "-c", checks], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    # Then each is found
    assert run.returncode == 0, run.stderr
