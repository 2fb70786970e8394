"""`mailbag demo`: the order flow of the user's story, end to end, with a timeline:
as a choreography of events, or as an orchestrated saga with compensation."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.status import Status

from mailbag.broker import Broker, connect, mask_url
from mailbag.cli.common import CliError, add_broker_option
from mailbag.examples.orders.choreography import build_app, place_order
from mailbag.examples.orders.events import Topics
from mailbag.examples.orders.saga import build_participants, order_saga
from mailbag.examples.orders.services import Payments, Shop, sample_orders
from mailbag.examples.orders.timeline import Timeline
from mailbag.workers import Worker
from mailbag.workers.saga import Orchestrator
from mailbag.workers.saga.store import open_store


def register(p: argparse.ArgumentParser) -> None:
    add_broker_option(p)
    p.add_argument("--orders", type=int, default=3, metavar="N", help="how many orders to place (default 3)")
    p.add_argument(
        "--fail-payment-every",
        type=int,
        default=3,
        metavar="K",
        help="decline the payment of every K-th order (default 3; 0 never)",
    )
    p.add_argument(
        "--mode",
        choices=("choreography", "saga"),
        default="choreography",
        help="services reacting to each other's events, or a saga orchestrator sending commands",
    )
    p.add_argument(
        "--store",
        metavar="URL",
        help="saga state store: sqlite:///file.db or postgresql://... "
        "(default: a SQLite file in a temporary directory)",
    )
    p.add_argument("--prefix", default="", help="prefix for every topic and queue name, to keep runs apart")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    if args.orders < 1:
        raise CliError("--orders must be at least 1")
    if args.fail_payment_every < 0:
        raise CliError("--fail-payment-every must be 0 (never) or more")
    status = Console(stderr=True).status("connecting")
    timeline = Timeline(expected=args.orders, on_line=lambda line: print(line, flush=True))
    shop = Shop(payments=Payments(fail_every=args.fail_payment_every), timeline=timeline)
    topics = Topics(args.prefix)
    print(f"broker: {mask_url(args.broker)}  mode: {args.mode}", flush=True)
    with status:  # the timeline goes to stdout as it happens, the status line to stderr
        async with await connect(args.broker) as broker:
            waiting = asyncio.create_task(_show_progress(status, shop, args.orders))
            try:
                if args.mode == "choreography":
                    await _choreography(broker, shop, topics, args)
                else:
                    await _saga(broker, shop, topics, args)
            finally:
                waiting.cancel()
    orders = shop.orders
    held = ", ".join(f"{sku}={n}" for sku, n in sorted(shop.inventory.reserved.items())) or "none"
    print(f"{orders.count('confirmed')} confirmed, {orders.count('cancelled')} cancelled; stock reserved: {held}")
    return 0


async def _choreography(broker: Broker, shop: Shop, topics: Topics, args: argparse.Namespace) -> None:
    async with Worker(build_app(shop, topics), broker, concurrency=8):
        for order in sample_orders(args.orders):
            await place_order(broker, shop, order, topics)
        await _until_everyone_told(shop, args.timeout)


async def _saga(broker: Broker, shop: Shop, topics: Topics, args: argparse.Namespace) -> None:
    saga = order_saga(topics)
    with tempfile.TemporaryDirectory(prefix="mailbag-demo-") as scratch:
        try:
            store = await open_store(args.store or f"sqlite:///{Path(scratch) / 'sagas.db'}")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            async with Worker(build_participants(shop, saga, topics), broker, concurrency=8):
                listener = lambda state, what: shop.timeline.record("saga", state.id, what)  # noqa: E731
                async with Orchestrator(saga, store, broker, listener=listener) as orchestrator:
                    for order in sample_orders(args.orders):
                        shop.timeline.record("orders", order.order_id, f"created, {order.amount_cents / 100:.2f}")
                        await orchestrator.begin(order.order_id, order.model_dump(mode="json"))
                    await _until_everyone_told(shop, args.timeout)
        finally:
            await store.close()


async def _show_progress(status: Status, shop: Shop, orders: int) -> None:
    """A line on the terminal while the flow runs (a remote broker takes seconds per hop)."""
    while True:
        told = len(shop.timeline.told)
        waited = time.monotonic() - shop.timeline.started
        status.update(f"{told} of {orders} customer(s) told, {waited:.0f}s; waiting for the broker")
        await asyncio.sleep(0.5)


async def _until_everyone_told(shop: Shop, timeout: float) -> None:
    try:
        await asyncio.wait_for(shop.timeline.all_told.wait(), timeout)
    except TimeoutError:
        raise CliError(f"the flow did not finish within {timeout:g}s") from None
