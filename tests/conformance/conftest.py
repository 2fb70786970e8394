import importlib
import pathlib

import pytest

from tests.conformance.env import Backend


def _backends() -> list[Backend]:
    found: list[Backend] = []
    for path in sorted(pathlib.Path(__file__).parent.glob("backend_*.py")):
        module = importlib.import_module(f"tests.conformance.{path.stem}")
        found.extend(module.BACKENDS)
    return found


BACKENDS = _backends()


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
async def env(request):
    async with request.param.open() as e:
        yield e
