"""The Dramatiq side of bench/processes.py: one actor doing the same CPU-bound work as
`apps:drain` and reporting the same way (see `apps`). Run by `dramatiq dramatiq_app`.

Configured by `BENCH_AMQP_URL`, `BENCH_QUEUE`, `BENCH_REPORT` and `BENCH_WORK_MS`."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dramatiq
from apps import REPORT, burn
from dramatiq.brokers.rabbitmq import RabbitmqBroker

dramatiq.set_broker(RabbitmqBroker(url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")))
WORK_MS = float(os.environ.get("BENCH_WORK_MS", "2"))
_state = {"handled": 0, "first": 0.0, "fd": -1}


@dramatiq.actor(queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def drain(order: dict) -> None:
    if _state["fd"] < 0 and "BENCH_REPORT" in os.environ:
        _state["fd"] = os.open(Path(os.environ["BENCH_REPORT"]) / str(os.getpid()), os.O_WRONLY | os.O_CREAT, 0o644)
    if not _state["handled"]:
        _state["first"] = time.time()
    burn(WORK_MS)
    _state["handled"] += 1
    if _state["fd"] >= 0:
        os.pwrite(_state["fd"], REPORT.pack(_state["handled"], _state["first"], time.time()), 0)
