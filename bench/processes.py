"""CPU-bound handlers on several processes, on the local RabbitMQ, in one run:
`mailbag worker --processes 1` against `--processes 2`, and Dramatiq
`--processes 2 --threads 1` doing the same work.

    python bench/processes.py [--url amqp://guest:guest@127.0.0.1:5672/] [--count 3000] [--work-ms 2]

Each drains a queue pre-filled with `count` messages; each message costs `work-ms`
milliseconds of pure Python (it holds the GIL, so one process runs one at a time).
mailbag runs with every other default (its durable SQLite idempotency store, shared by
the processes). Rates come from the handlers' own reports (first to last handler
call), medians of `--rounds` rounds in alternating order. Prints
`processes_speedup=<2 processes / 1>` and `dramatiq_ratio=<mailbag / Dramatiq, 2 processes each>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import uuid

from side_by_side import BENCH, Bench, body, drain_with, run_cli_worker


async def dramatiq_drain(url: str, queue: str, count: int) -> float:
    """Fill the actor's queue the way Dramatiq does (its own `send`), then drain it
    with `dramatiq --processes 2 --threads 1`."""
    env = {"BENCH_AMQP_URL": url, "BENCH_QUEUE": queue}
    os.environ.update(env)
    import dramatiq_app  # the actor's queue comes from the environment set just above

    await asyncio.to_thread(lambda: [dramatiq_app.drain.send({"n": n, "body": body(n).decode()}) for n in range(count)])
    command = [sys.executable, "-m", "dramatiq", "dramatiq_app", "--path", str(BENCH), "--processes", "2"]
    return await drain_with([*command, "--threads", "1"], env, count)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--work-ms", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["BENCH_WORK_MS"] = str(args.work_ms)
    dramatiq_queue = f"bench_dramatiq_{uuid.uuid4().hex[:8]}"
    rates: dict[str, list[float]] = {"mailbag_1": [], "mailbag_2": [], "dramatiq_2": []}
    async with Bench(args.url, args.count, rate=0, latency_count=0) as bench:

        async def mailbag(processes: int) -> float:
            topic, queue = await bench.filled()
            try:
                return await run_cli_worker(args.url, topic, queue, args.count, "--processes", str(processes))
            finally:
                await bench.drop(topic, queue)

        runs = {
            "mailbag_1": lambda: mailbag(1),
            "mailbag_2": lambda: mailbag(2),
            "dramatiq_2": lambda: dramatiq_drain(args.url, dramatiq_queue, args.count),
        }
        try:
            for round_ in range(args.rounds):
                for name in list(runs) if round_ % 2 == 0 else list(runs)[::-1]:
                    rate = await runs[name]()
                    rates[name].append(rate)
                    print(f"round {round_ + 1} {name}: {rate:,.0f} msg/s", flush=True)
        finally:
            async with bench.connection.channel() as channel:
                for name in (dramatiq_queue, f"{dramatiq_queue}.DQ", f"{dramatiq_queue}.XQ"):
                    await channel.queue_delete(name)
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"median {name}: {value:,.0f} msg/s")
    print(f"processes_speedup={median['mailbag_2'] / median['mailbag_1']:.3f}")
    print(f"dramatiq_ratio={median['mailbag_2'] / median['dramatiq_2']:.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    asyncio.run(main())
