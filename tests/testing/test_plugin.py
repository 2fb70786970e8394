"""The pytest plugin as a user meets it: in a folder outside the repository, a test
file that imports only `mailbag` and `mailbag.testing` runs under plain `pytest`, which
finds the plugin through its entry point, on memory://, SQS on moto and RabbitMQ."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rabbitmq.service import amqp_url

USER_TESTS = Path(__file__).with_name("user_tests.py")


def plain_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pytest` of this environment, run in `folder` as a user would run it."""
    script = Path(sys.executable).with_name("pytest")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pytest"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH", "PYTEST_PLUGINS")}
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", "-q", "-W", "ignore::DeprecationWarning", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def user_project(tmp_path: Path) -> Path:
    assert not tmp_path.is_relative_to(Path(__file__).parents[2]), "the user's project is outside the repository"
    shutil.copy(USER_TESTS, tmp_path / "test_orders.py")
    return tmp_path


def test_a_users_test_runs_on_memory_moto_and_rabbitmq_under_plain_pytest(user_project):
    # Given a user's test file and nothing else: no conftest, no settings
    brokers = ["memory://", "sqs://?region=eu-west-1", amqp_url()]
    # When plain pytest runs it once per broker
    run = plain_pytest(user_project, "--durations=0", "--durations-min=0", *(f"--mailbag-broker={b}" for b in brokers))
    # Then the plugin was found and the one test body passed on each broker
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
    print(run.stdout)


def test_sqs_without_moto_installed_says_which_extra_to_install(user_project):
    # Given an environment where moto cannot be imported
    (user_project / "moto.py").write_text('raise ModuleNotFoundError("No module named \'moto\'", name="moto")\n')
    # When a test asks for SQS without an endpoint
    run = plain_pytest(user_project, "--mailbag-broker=sqs://?region=eu-west-1")
    # Then it fails with one line naming the extra
    assert run.returncode == 1
    assert "sqs:// without an endpoint runs on moto: pip install 'mailbag[testing]'" in run.stdout
