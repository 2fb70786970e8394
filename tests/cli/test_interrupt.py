"""Ctrl-C, as a user presses it: SIGINT to a `mailbag` process. It exits within two
seconds with status 130 and no traceback, whatever it was doing (importing, talking
to the broker), and `publish` leaves on stdout exactly the ids the broker confirmed
and says how many on stderr. The publish runs against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mailbag.broker import Queue, Topology
from mailbag.broker.rabbitmq import open_broker
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, queue_depths, remove_declared

#: the bound the command line promises between Ctrl-C and the process's end
BOUND = 2.0


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


class Printed:
    """Reads a process's stdout as it comes (a pipe left unread would block its
    writes): `first` is set at the first line, `all` the lines once it ended."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.first = threading.Event()
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.strip())
            self.first.set()
        self.first.set()

    def all(self) -> list[str]:
        self._reader.join(30)
        return self.lines


def interrupt(proc: subprocess.Popen) -> tuple[float, str]:
    """SIGINT, then (seconds until the process ended, its stderr). Fails, killing
    it, if it outlives the bound by far."""
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:  # its output is small enough for the pipes: it cannot block on writing
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("still running 30 s after SIGINT")
    took = time.monotonic() - sent
    assert proc.stderr is not None
    return took, proc.stderr.read()


def assert_quiet_130(proc: subprocess.Popen, took: float, err: str) -> None:
    assert proc.returncode == 130, err
    assert took < BOUND, f"exited {took:.2f}s after SIGINT"
    assert "Traceback" not in err and "never retrieved" not in err, err


async def test_ctrl_c_during_a_big_publish_prints_what_was_confirmed():
    # Given a queue on RabbitMQ taking a topic, and `publish --count 40000` under way
    name = run_name("int")
    broker = await open_broker(amqp_url())
    try:
        await broker.declare(Topology(queues=(Queue(name, (name,)),)))
        proc = start("publish", name, '{"n": 1}', "--count", "40000", "--broker", amqp_url())
        printed = Printed(proc)
        await asyncio.wait_for(asyncio.to_thread(printed.first.wait), 60)
        # When Ctrl-C comes mid-way
        took, err = interrupt(proc)
        # Then it ends quietly within the bound, with the confirmed ids on stdout
        assert_quiet_130(proc, took, err)
        ids = printed.all()
        assert len(set(ids)) == len(ids)
        [summary] = [line for line in err.splitlines() if line.startswith("mailbag: interrupted:")]
        assert summary.startswith(f"mailbag: interrupted: {len(ids)} of 40000 message(s) confirmed"), err
        assert 0 < len(ids) < 40000
        # and the queue holds every one of them (and at most the run in flight more)
        held = queue_depths(name)[name]
        assert len(ids) <= held <= len(ids) + 500, (len(ids), held)
    finally:
        await broker.close()
        await remove_declared(broker)


@pytest.fixture
def stalled(tmp_path):
    """An environment in which importing `module` signals (a file appears) and then
    stalls, so the test can press Ctrl-C while the command is importing it."""

    def env(module: str) -> tuple[dict, Path]:
        marker = tmp_path / "importing"
        (tmp_path / "sitecustomize.py").write_text(
            textwrap.dedent(
                f"""
                import pathlib, sys, time
                class _Stall:
                    def find_spec(self, name, path=None, target=None):
                        if name == {module!r}:
                            pathlib.Path({str(marker)!r}).touch()
                            time.sleep(60)
                sys.meta_path.insert(0, _Stall())
                """
            )
        )
        return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, marker

    return env


@pytest.mark.parametrize(
    "module, args",
    [
        # while the command's own module loads, before it runs
        ("mailbag.cli.publish", ("publish", "t", "{}", "--broker", "amqp://127.0.0.1/")),
        # while it runs: the broker SDK loads as it connects
        ("aio_pika", ("queues", "--queue", "q", "--broker", "amqp://127.0.0.1/")),
        # the worker's settings, pydantic-heavy
        ("mailbag.workers", ("worker", "mailbag.examples.orders.app:app")),
    ],
)
async def test_ctrl_c_while_importing_is_quiet(stalled, module, args):
    env, marker = stalled(module)
    proc = start(*args, env=env)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{module} was never imported"
        await asyncio.sleep(0.02)
    took, err = interrupt(proc)
    assert_quiet_130(proc, took, err)
    assert err == "", err
