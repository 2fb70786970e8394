"""`mailbag compare` as a user runs it: a subprocess, its exit status, its files."""

import json
import subprocess
import sys

import pytest

from tests.harness.conftest import rabbitmqctl
from tests.rabbitmq.service import HOST, PORT


def mailbag(*args: str, timeout: float = 110) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailbag.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_compare_on_memory_writes_the_whole_report(tmp_path):
    out = tmp_path / "report"
    result = mailbag(
        "compare",
        "--messages",
        "30",
        "--broker",
        "memory://",
        "--broker",
        "memory://?fifo=1",
        "--scenario",
        "ordering",
        "--scenario",
        "crash",
        "--scenario",
        "latency",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "memory-ordered" in result.stdout and "PASS" in result.stdout
    assert f"report: {out / 'index.md'}" in result.stdout
    data = json.loads((out / "results.json").read_text())
    assert {(r["broker"], r["scenario"]) for r in data["results"]} == {
        (b, s) for b in ("memory", "memory-ordered") for s in ("ordering", "crash", "latency")
    }
    assert {p.name for p in out.glob("*.png")} == {"latency.png", "ordering.png", "crash.png", "throughput.png"}


@pytest.mark.parametrize(
    "args, says",
    [
        (("--messages", "0"), "--messages must be >= 1"),
        (("--broker", "amqp://u:hunter2@h/?queue=lazy"), "queue='lazy'"),
        (("--broker", "kafka://u:hunter2@h"), "unknown broker URL scheme"),
        (("--scenario", "nope"), "invalid choice: 'nope'"),
        (("--broker", "memory://", "--broker", "memory://?label=memory"), "same label"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says, tmp_path):
    result = mailbag("compare", "--out", str(tmp_path), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "hunter2" not in result.stderr + result.stdout


@pytest.mark.timeout(300)  # every scenario on two RabbitMQ variants, on a busy machine
def test_compare_on_rabbitmq_leaves_the_broker_as_it_found_it_and_says_which_to_pick(tmp_path, own_vhost):
    # Given a vhost of the test's own (other tests run compare beside this one)
    url = f"amqp://guest:guest@{HOST}:{PORT}/{own_vhost}"
    # When every scenario runs there, on classic queues and on ordered quorum queues
    out = tmp_path / "report"
    result = mailbag(
        "compare",
        "--messages",
        "40",
        "--listen",
        "0.5",
        "--broker",
        url,
        "--broker",
        f"{url}?queue=quorum&ordered=1",
        "--out",
        str(out),
        timeout=280,
    )
    assert result.returncode == 0, result.stderr
    # Then the vhost holds no queue or exchange of the run's, only the shared delay levels
    queues = rabbitmqctl("list_queues", "-p", own_vhost, "name").split()[1:]
    exchanges = rabbitmqctl("list_exchanges", "-p", own_vhost, "name").split()[1:]
    assert [n for n in queues + exchanges if n.startswith("cmp-")] == []
    # And the report states its criteria and computes its advice from the results
    page = (out / "index.md").read_text()
    assert "## What this means" in page and "### Which to pick" in page
    assert "**crash**: FAIL when a message the killed consumer held never comes back." in page
    assert "Need per-key order with 4 competing consumers: use rabbitmq-quorum-ordered (0 violations" in page
    # And it states how long it waited on each broker, and why
    assert "| rabbitmq-classic | `amqp://guest:***@" in page and "| 25s | 0.5s | RabbitMQ hands back at once" in page
