"""Apps the benchmarks run under `mailbag worker`, in processes of their own, as users
run them. Configured by the environment the benchmark sets:

- `BENCH_TOPIC`, `BENCH_QUEUE`: what to consume;
- `BENCH_REPORT`: a folder; each process keeps `<pid>` there up to date with how many
  messages it handled and when it handled the first and the latest (three doubles), so
  the benchmark reads the drain rate off the handlers without stopping them;
- `BENCH_WORK_MS`: milliseconds of pure-Python work per message (default 0).

    mailbag worker apps:drain --broker amqp://...
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

from pydantic import BaseModel

from mailbag.workers import App

REPORT = struct.Struct("ddd")  # handled, first at, latest at (wall clock)


class Order(BaseModel):
    order_id: str
    amount: int
    note: str


def read_reports(folder: Path) -> tuple[int, float, float]:
    """Messages handled by every process, the first handler start, the latest end."""
    handled, first, latest = 0, float("inf"), 0.0
    for path in folder.iterdir():
        data = path.read_bytes()
        if len(data) == REPORT.size:
            count, start, end = REPORT.unpack(data)
            handled, first, latest = handled + int(count), min(first, start), max(latest, end)
    return handled, first, latest


def burn(ms: float) -> None:
    """`ms` milliseconds of pure-Python work, counted in this thread's CPU time so that
    a busy machine does not shorten it (holds the GIL, as CPU-bound handlers do)."""
    deadline = time.thread_time() + ms / 1000
    n = 0
    while time.thread_time() < deadline:
        n += sum(i * i for i in range(50))


def _drain_app() -> App:
    app = App("bench")
    topic, queue = os.environ.get("BENCH_TOPIC", "bench"), os.environ.get("BENCH_QUEUE", "bench.q")
    work_ms = float(os.environ.get("BENCH_WORK_MS", "0"))
    report = Path(os.environ.get("BENCH_REPORT", ".")) / str(os.getpid())
    fd = os.open(report, os.O_WRONLY | os.O_CREAT, 0o644) if "BENCH_REPORT" in os.environ else -1
    state = {"handled": 0, "first": 0.0}

    @app.handler(topic, queue=queue, model=Order)
    async def handle(order: Order) -> None:
        if not state["handled"]:
            state["first"] = time.time()
        if work_ms:
            burn(work_ms)
        now = time.time()
        state["handled"] += 1
        if fd >= 0:
            os.pwrite(fd, REPORT.pack(state["handled"], state["first"], now), 0)

    return app


drain = _drain_app()
