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
#: the smallest test a new project writes with the plugin
FIRST_TEST = """\
import pytest

from mailbag import App

app = App("inventory")


@app.handler("orders.placed")
async def reserve(order: dict) -> None: ...


@pytest.mark.asyncio
async def test_an_order_is_handled(mailbag_bus):
    async with mailbag_bus(app) as bus:
        message_id = await bus.publish("orders.placed", {"order_id": "o-1"})
        await bus.settle()
        assert bus.outcome(message_id).status == "handled"
"""


def plain_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`pytest` of this environment, run in `folder` as a user would run it."""
    script = Path(sys.executable).with_name("pytest")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pytest"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTHONPATH", "PYTEST_PLUGINS")}
    return subprocess.run(
        [*command, "-p", "no:cacheprovider", "-q", *args],
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


def test_a_new_project_gets_no_deprecation_warning(tmp_path):
    # Given a new project: one test file using the plugin, no pytest settings at all
    (tmp_path / "test_first.py").write_text(FIRST_TEST)
    # When plain pytest runs it with deprecation warnings as errors
    run = plain_pytest(tmp_path, "-W", "error::DeprecationWarning")
    # Then it passes, and pytest-asyncio's unset-loop-scope warning is not shown
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout
    assert "asyncio_default_fixture_loop_scope" not in run.stdout + run.stderr


def test_a_projects_own_fixture_loop_scope_is_kept(tmp_path):
    # Given a project that sets pytest-asyncio's fixture loop scope itself
    (tmp_path / "test_first.py").write_text(FIRST_TEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = module\n")
    # When plain pytest runs its test
    run = plain_pytest(tmp_path, "-v")
    # Then pytest-asyncio runs with the project's setting
    assert run.returncode == 0, run.stdout + run.stderr
    assert "asyncio_default_fixture_loop_scope=module" in run.stdout
