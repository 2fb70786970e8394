"""`mailbag worker MODULE:APP`: run an app's handlers until SIGINT or SIGTERM.

Settings come from `MAILBAG_*` environment variables (see `workers.WorkerSettings`);
flags given on the command line win over them."""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from broker import connect
from mailbag.cli.common import CliError, add_broker_option, load_app
from workers import Worker, WorkerSettings
from workers import logs
from workers.shutdown import serve


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("worker", help="run an app's handlers until SIGINT/SIGTERM")
    p.add_argument("app", metavar="MODULE:APP", help="the App to run, e.g. myservice.handlers:app")
    add_broker_option(p)
    p.add_argument("--concurrency", type=int, metavar="N", help="handlers in flight at once ($MAILBAG_CONCURRENCY, 10)")
    p.add_argument("--prefetch", type=int, metavar="N", help="unsettled deliveries per queue ($MAILBAG_PREFETCH, 2 x concurrency)")
    p.add_argument("--queue", action="append", metavar="Q", help="consume only this queue; repeat for more ($MAILBAG_QUEUES)")
    p.add_argument(
        "--grace-period", type=float, metavar="S", help="seconds in-flight handlers get on shutdown ($MAILBAG_GRACE_PERIOD, 30)"
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    """The environment's settings with the flags given on top; one line on a bad value."""
    flags = {
        "broker_url": args.broker,
        "concurrency": args.concurrency,
        "prefetch": args.prefetch,
        "queues": tuple(args.queue) if args.queue else None,
        "grace_period": args.grace_period,
    }
    try:
        return WorkerSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise CliError(f"bad worker setting {name}: {first['msg']}") from None


async def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    app = load_app(args.app)
    logs.configure(settings.log_level)
    async with await connect(settings.broker_url) as broker:
        try:
            worker = Worker(app, broker, settings=settings)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        return await serve(worker)
