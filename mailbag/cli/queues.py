"""`mailbag queues`: ready / in-flight / delayed / dead-letter counts per queue, and the
broker's catch-all for delayed messages whose queue is gone (`Broker.orphans`)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from rich.console import Console
from rich.table import Table

from mailbag.broker import QueueStats, connect
from mailbag.cli.common import CliError, add_broker_option, load_app, refuse_in_process


def register(p: argparse.ArgumentParser) -> None:
    add_broker_option(p)
    p.add_argument("--app", metavar="MODULE:APP", help="the app whose queues to list")
    p.add_argument("--queue", action="append", default=[], metavar="Q", help="a queue to list (repeat)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    refuse_in_process(args.broker, "inspect")
    names = list(args.queue)
    if args.app:
        names += [q for q in load_app(args.app).queues if q not in names]
    async with await connect(args.broker) as broker:
        if not names:
            listed = await broker.queue_names()
            if listed is None:
                raise CliError("this broker cannot list its queues; name them with --app MODULE:APP or --queue Q")
            names = listed
        stats = [await broker.stats(name) for name in names if name != broker.orphans_queue]
        orphans = await broker.orphans()
        if broker.orphans_queue is not None and orphans is not None:
            stats.append(QueueStats(broker.orphans_queue, orphans, None, None, 0))
    if args.json:
        print(json.dumps([dataclasses.asdict(s) for s in stats], indent=2))
        return 0
    table = Table("queue", "ready", "in flight", "delayed", "dead letters")
    for s in stats:
        table.add_row(
            s.queue, *("?" if v is None else str(v) for v in (s.ready, s.in_flight, s.delayed, s.dead_letters))
        )
    Console().print(table)
    return 0
