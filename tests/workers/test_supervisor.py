"""`mailbag worker --processes N`: N worker processes under one supervisor that
restarts the ones that die, passes signals on and exits once they all have."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.workers.proc_app:app"
STARTED = re.compile(r"worker process (\d+) started \(pid (\d+)\)")


class Supervised:
    """A `mailbag worker --processes N` process and the lines it (and its children) print."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MAILBAG_TEST_RUN": "sup", "MAILBAG_TEST_DB": "unused"}
        env["MAILBAG_BROKER_URL"] = "memory://"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailbag.cli", "worker", APP, "--queue", "tsup.tally", *args],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 30) -> list[re.Match]:
        """The first `count` matches of `pattern` in the output from now on (fails after `timeout`)."""
        found: list[re.Match] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                output = "".join(self.seen)
                raise AssertionError(f"no {pattern!r} within {timeout}s; output so far:\n{output}") from None
            self.seen.append(line)
            if match := re.search(pattern, line):
                found.append(match)
        return found

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then the exit status once it and its children closed the output."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.reader.join(timeout)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_reaches_every_worker_process_and_the_supervisor_exits_0_after_them():
    # Given a supervisor with two worker processes, both consuming
    supervised = Supervised("--processes", "2")
    try:
        pids = sorted(int(m[2]) for m in supervised.wait_for(STARTED.pattern, count=2))
        supervised.wait_for("consuming tsup.tally", count=2)
        # When it gets SIGTERM
        code = supervised.stop()
        # Then both children stopped gracefully, and so did the supervisor
        assert code == 0
        assert not any(_alive(pid) for pid in pids)
        assert sum("SIGTERM: stopping" in line for line in supervised.seen) == 2, "".join(supervised.seen)
    finally:
        supervised.kill()


def test_a_worker_process_that_dies_is_started_again_and_the_exit_status_says_one_failed():
    # Given a supervisor with two consuming worker processes
    supervised = Supervised("--processes", "2")
    try:
        started = {int(m[1]): int(m[2]) for m in supervised.wait_for(STARTED.pattern, count=2)}
        supervised.wait_for("consuming tsup.tally", count=2)
        # When one of them is killed
        os.kill(started[0], signal.SIGKILL)
        # Then the supervisor says so and starts a new process in its place
        supervised.wait_for(rf"worker process 0 \(pid {started[0]}\) died with -9")
        again = supervised.wait_for(r"worker process 0 started \(pid (\d+)\)")[0]
        assert int(again[1]) != started[0]
        supervised.wait_for("consuming tsup.tally")
        # And once stopped, it exits 1: a child failed during the run
        assert supervised.stop() == 1
    finally:
        supervised.kill()


def test_processes_below_one_is_refused_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "mailbag.cli", "worker", APP, "--processes", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MAILBAG_TEST_RUN": "sup", "MAILBAG_TEST_DB": "unused"},
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "bad worker setting processes" in result.stderr and len(result.stderr.strip().splitlines()) == 1
