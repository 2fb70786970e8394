"""The README's first run, as written: save the app, start a worker in one terminal,
publish an order from another, see it handled. Run against the suite's RabbitMQ vhost,
with the README's broker URL and names swapped for the test's (its vhost, its prefix)."""

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import delete_run_names
from tests.names import run_name
from tests.rabbitmq.service import amqp_url, queue_depths

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = re.compile(r"^### First run, in three steps\n(.*?)(?=^#)", re.S | re.M)
FENCE = re.compile(r"^ *```\n(.*?)^ *```", re.S | re.M)
URL = "amqp://guest:guest@localhost/"
#: names the README's app and commands use, which the test prefixes
NAMES = ('"inventory"', "orders.placed", "inventory.reserved")
TIMEOUT = 60


def first_run() -> tuple[str, list[list[str]]]:
    """The README's app, and the command lines of each of the three steps."""
    text = README.read_text()
    app = re.search(r"```python\n(.*?)```", text, re.S)
    section = SECTION.search(text)
    assert app and section, "the README has its app and its first run"
    steps = [[line.strip() for line in block.splitlines() if line.strip()] for block in FENCE.findall(section[1])]
    return app[1], steps


class Worker:
    """`mailbag worker` in its own terminal: its output read as it comes."""

    def __init__(self, command: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._seen:
                self.output.append(line)
                self._seen.notify_all()

    def wait_for(self, text: str) -> None:
        with self._seen:
            found = self._seen.wait_for(lambda: text in "".join(self.output), timeout=TIMEOUT)
        assert found, f"the worker never printed {text!r}: {''.join(self.output)}"

    def stop(self) -> int:
        """Ctrl-C, as the README says."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(TIMEOUT)


def test_the_readmes_first_run_handles_the_published_order(tmp_path):
    prefix = f"{run_name('readme')}-"

    def ours(text: str) -> str:
        text = text.replace(URL, amqp_url())
        for name in NAMES:
            text = text.replace(name, name.replace(name.strip('"'), prefix + name.strip('"')))
        return text

    app, steps = first_run()
    assert len(steps) == 3 and all(steps), steps
    # a terminal shows each line at once (a pipe would hold them) and is wide enough for the table
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("MAILBAG_BROKER_URL", None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    # Given the README's app saved as myservice.py
    (tmp_path / "myservice.py").write_text(ours(app))
    worker: Worker | None = None
    queue = f"{prefix}inventory.reserve"
    try:
        outputs = []
        for number, step in enumerate(steps, 1):
            if number == 3:
                # Step 3: the worker's terminal shows the handler's line for the order
                assert worker is not None, "step 1 starts a worker"
                worker.wait_for("reserving stock for order o-1")
            for line in step:
                words = shlex.split(ours(line))
                if words[0] == "export":
                    key, value = words[1].split("=", 1)
                    env[key] = value
                elif words[:2] == ["mailbag", "worker"]:
                    # Step 1: the worker starts and declares its queue
                    worker = Worker(words, tmp_path, env)
                    wait_for_queue(queue, worker)
                else:
                    run = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
                    assert run.returncode == 0, f"step {number}: {line}\n{run.stderr}"
                    outputs.append(run.stdout)
        # Step 2 printed the message id, and step 3's table shows the queue with nothing
        # ready and nothing dead-lettered
        published, queues = outputs
        assert re.fullmatch(r"\S+\n", published), published
        [row] = [line for line in queues.splitlines() if queue in line]
        cells = [cell.strip() for cell in re.split(r"[│|]", row) if cell.strip()]
        assert (cells[0], cells[1], cells[-1]) == (queue, "0", "0"), queues
        # and Ctrl-C stops the worker cleanly
        assert worker is not None and worker.stop() == 0, "".join(worker.output if worker else [])
    finally:
        if worker is not None and worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()
        delete_run_names(prefix)


def wait_for_queue(name: str, worker: Worker) -> None:
    deadline = time.monotonic() + TIMEOUT
    while name not in queue_depths(name):
        assert worker.process.poll() is None, "".join(worker.output)
        assert time.monotonic() < deadline, f"the worker declared no queue {name} within {TIMEOUT}s"
