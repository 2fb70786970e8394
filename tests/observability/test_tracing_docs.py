"""docs/tracing.md's setup block runs as written, and what it imports comes with
`pip install 'mailbag[tracing]'`: each module's distribution is the extra's, or one of
their dependencies."""

import ast
import importlib.util
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tracing.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def setup_block() -> str:
    return BLOCK.findall(DOC.read_text())[0]


def imported_modules(source: str) -> set[str]:
    """The modules `source` imports from (`from opentelemetry import trace`: the module
    `opentelemetry.trace`, since `opentelemetry` is a namespace no one distribution owns)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                modules.add(submodule if importlib.util.find_spec(node.module).origin is None else node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def installed_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, their dependencies included."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = metadata.distribution(requirement.name).metadata["Name"].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                todo.append(dependency)
    return seen


def owner(module: str) -> str:
    """The installed distribution holding `module`'s file."""
    origin = Path(importlib.util.find_spec(module).origin).resolve()
    for dist in metadata.distributions():
        for file in dist.files or []:
            if Path(dist.locate_file(file)).resolve() == origin:
                return dist.metadata["Name"].lower().replace("_", "-")
    raise AssertionError(f"no installed distribution holds {module} ({origin})")


def test_what_the_setup_block_imports_comes_with_the_tracing_extra():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tracing"]
    installed = installed_by(extra)
    modules = imported_modules(setup_block())
    assert "opentelemetry.exporter.otlp.proto.grpc.trace_exporter" in modules
    assert {m: owner(m) for m in modules if owner(m) not in installed} == {}


def test_the_setup_block_runs_as_written():
    # the provider is process-wide: the block runs in a process of its own, and shuts
    # its provider down (nothing to export, so no collector is needed)
    source = setup_block() + "\nprovider.shutdown()\n"
    run = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
