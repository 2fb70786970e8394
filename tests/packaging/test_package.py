"""mailbag installs as ONE package: the wheel holds only `mailbag`, importing it loads no
broker SDK, and a service with its own `workers/` and `broker/` packages runs beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

from mailbag.broker import Queue, Subscription, Topology
from mailbag.broker.rabbitmq import open_broker
from tests.rabbitmq.service import amqp_url, remove_declared

ROOT = Path(__file__).resolve().parents[2]
SDKS = ("aio_pika", "aiormq", "pamqp", "boto3", "botocore")


def test_the_wheel_holds_one_top_level_package(tmp_path):
    # When the project is built as a wheel
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            str(ROOT),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("mailbag-*.whl")

    # Then its only top-level package is `mailbag`, with the folders as subpackages
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mailbag"}
    for module in ("broker/rabbitmq/adapter.py", "workers/runtime.py", "publishers/publisher.py", "dlq/record.py"):
        assert f"mailbag/{module}" in names
    assert "mailbag/examples/orders/app.py" in names  # the demo ships inside the package


def test_import_mailbag_loads_no_broker_sdk_until_an_adapter_is_opened():
    probe = "import sys, mailbag; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert not [sdk for sdk in SDKS if f"'{sdk}'" in loaded.stdout], loaded.stdout


def _service(tmp_path: Path, topic: str, queue: str) -> Path:
    """A user's service whose own packages are called `workers` and `broker`."""
    files = {
        "broker/__init__.py": "",
        "broker/names.py": f"TOPIC = {topic!r}\nQUEUE = {queue!r}\n",
        "workers/__init__.py": "",
        "workers/handlers.py": """
            from broker.names import QUEUE, TOPIC  # the service's own `broker` package
            from mailbag import App

            app = App("svc")


            @app.handler(TOPIC, queue=QUEUE)
            def handle(payload: dict) -> None:
                print("handled", payload["n"], flush=True)
        """,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILBAG_")}
    env.pop("PYTHONPATH", None)  # only the installed mailbag and the service's folder
    return env


def _mailbag(service: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mailbag.cli", *args],
        cwd=service,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _until(proc: subprocess.Popen, text: str) -> list[str]:
    """Lines the process printed up to and including the first holding `text`."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"the process ended without printing {text!r}: {''.join(seen)}")


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_service_with_its_own_workers_and_broker_packages_runs_on_memory(tmp_path):
    # Given a service whose packages are named like mailbag's folders
    service = _service(tmp_path, "svc.orders", "svc.orders.q")

    # When `mailbag worker workers.handlers:app` runs in its folder on memory://
    worker = _mailbag(service, "worker", "workers.handlers:app", "--broker", "memory://")

    # Then it imports the service's own packages, consumes, and exits 0 on SIGTERM
    try:
        _until(worker, "consuming svc.orders.q")
    finally:
        assert _stop(worker) == 0


async def test_a_service_with_its_own_workers_and_broker_packages_handles_a_message(tmp_path):
    # Given the same service on RabbitMQ, under names of this run
    run = uuid.uuid4().hex[:8]
    topic, queue = f"svc-{run}.orders", f"svc-{run}.orders.q"
    service = _service(tmp_path, topic, queue)
    url = amqp_url()
    broker = await open_broker(url)
    await broker.declare(Topology(queues=(Queue(queue, (Subscription(topic),)),)))
    worker = _mailbag(service, "worker", "workers.handlers:app", "--broker", url)
    try:
        _until(worker, f"consuming {queue}")

        # When a message is published to its topic from the command line
        published = _mailbag(service, "publish", topic, '{"n": 7}', "--broker", url)
        assert published.wait(60) == 0, published.stdout.read()

        # Then the service's handler handles it, and the worker exits 0 on SIGTERM
        _until(worker, "handled 7")
    finally:
        assert _stop(worker) == 0
        await remove_declared(broker)
        await broker.close()
