"""`mailbag worker`, run as a user runs it: flags, `MAILBAG_*` settings, bad input, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.workers.proc_app:app"


def _env(**more: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "MAILBAG_BROKER_URL"}
    return {**inherited, "PYTHONPATH": str(ROOT), "MAILBAG_TEST_RUN": "cli", "MAILBAG_TEST_DB": "unused", **more}


def worker(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**env),
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "args, env, says",
    [
        ((APP, "--concurrency", "0"), {}, "bad worker setting concurrency: Input should be greater than or equal to 1"),
        ((APP,), {"MAILBAG_GRACE_PERIOD": "soon"}, "bad worker setting grace_period"),
        ((APP, "--queue", "nope"), {}, "has no queue 'nope'"),
        ((APP, "--prefetch", "x"), {}, "invalid int value"),
        ((APP,), {"MAILBAG_REQUIRE_BROKER_URL": "true"}, "no broker URL: set MAILBAG_BROKER_URL (or --broker)"),
    ],
)
def test_bad_settings_print_one_line_and_exit_2(args, env, says):
    result = worker(*args, **env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_worker_with_exit_0_and_settings_come_from_the_environment():
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", "worker", APP, "--queue", "tcli.tally"],
        env=_env(MAILBAG_CONCURRENCY="3", MAILBAG_BROKER_URL="memory://user:hunter2@x/"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = proc.stdout.readline()  # logged once consuming, signal handlers in place
        assert "consuming tcli.tally" in started and "hunter2" not in started, started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "SIGTERM: stopping" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_broker_url_given_as_a_flag_satisfies_require_broker_url():
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", "worker", APP, "--queue", "tcli.tally", "--broker", "memory://"],
        env=_env(MAILBAG_REQUIRE_BROKER_URL="true"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        started = proc.stdout.readline()
        assert "consuming tcli.tally" in started, started
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
