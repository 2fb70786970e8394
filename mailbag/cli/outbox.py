"""`mailbag outbox relay|status|prune --db URL`: run the transactional outbox's relay,
and look after its table."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from mailbag.broker import connect, mask_url
from mailbag.cli.common import CliError, add_broker_option, load_app
from mailbag.publishers import Publisher
from mailbag.publishers.outbox import DEFAULT_TABLE, Outbox, Relay, RelaySettings, open_outbox

log = logging.getLogger("mailbag.outbox")


def register(p: argparse.ArgumentParser) -> None:
    commands = p.add_subparsers(dest="outbox_command", metavar="ACTION", parser_class=type(p))
    commands.required = True

    relay = commands.add_parser("relay", help="publish committed outbox rows until SIGINT/SIGTERM")
    _add_db_options(relay)
    add_broker_option(relay)
    relay.add_argument("--app", metavar="MODULE:APP", help="validate payloads against this app's topic models")
    relay.add_argument("--batch", type=int, default=100, metavar="N", help="rows per batch (default 100)")
    relay.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="longest wait for new rows")
    relay.add_argument("--retention", type=float, default=7 * 24 * 3600.0, metavar="S", help="keep sent rows this long")
    relay.add_argument(
        "--once", action="store_true", help="publish what is due, then exit (status 1 if some could not be sent)"
    )
    relay.set_defaults(run=run_relay)

    status = commands.add_parser("status", help="pending, failing and sent row counts")
    _add_db_options(status)
    status.set_defaults(run=run_status)

    prune = commands.add_parser("prune", help="delete rows sent longer ago than --older-than")
    _add_db_options(prune)
    prune.add_argument("--older-than", type=float, required=True, metavar="S", help="age in seconds")
    prune.set_defaults(run=run_prune)


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        required=True,
        metavar="URL",
        help="sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host/db",
    )
    p.add_argument("--table", default=DEFAULT_TABLE, metavar="NAME", help=f"outbox table (default {DEFAULT_TABLE})")


def _outbox(args: argparse.Namespace, **options: object) -> Outbox:
    try:
        return open_outbox(args.db, table=args.table, **options)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def run_relay(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    try:
        settings = RelaySettings(batch_size=args.batch, poll_interval=args.poll_interval, retention=args.retention)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    app = load_app(args.app) if args.app else None
    outbox = _outbox(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    async with await connect(args.broker) as broker, outbox:
        relay = Relay(outbox, Publisher(broker, app=app), settings)
        if args.once:
            return await _relay_once(relay, outbox)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, relay.stop)
        log.info("relaying %s table %s to %s", mask_url(args.db), args.table, mask_url(args.broker))
        await relay.run()
    return 0


async def _relay_once(relay: Relay, outbox: Outbox) -> int:
    """Publish what is due; exit 1 when some of it could not be sent (the warning above
    says why), so a script or a cron job notices."""
    await outbox.setup()
    print(f"sent {await relay.drain()}")
    failing = (await outbox.stats()).failing
    if failing:
        log.error("%d outbox row(s) could not be sent; they stay pending and are retried", failing)
        return 1
    return 0


async def run_status(args: argparse.Namespace) -> int:
    async with _outbox(args) as outbox:
        await outbox.setup()
        s = await outbox.stats()
    age = "-" if s.oldest_pending_age is None else f"{s.oldest_pending_age:.1f}s"
    print(f"pending {s.pending}  failing {s.failing}  sent {s.sent}  oldest pending {age}")
    return 0


async def run_prune(args: argparse.Namespace) -> int:
    if args.older_than < 0:
        raise CliError("--older-than must be >= 0")
    async with _outbox(args) as outbox:
        await outbox.setup()
        print(f"pruned {await outbox.prune(args.older_than)}")
    return 0
