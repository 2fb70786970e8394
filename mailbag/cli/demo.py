"""`mailbag demo`: the order flow of the user's story, end to end, with a timeline."""

from __future__ import annotations

import argparse
import asyncio

from broker import connect, mask_url
from broker.codec import encode
from broker.message import Message
from examples.orders.choreography import Timeline, build_app
from examples.orders.events import TOPICS, Item, OrderPlaced
from mailbag.cli.common import CliError, add_broker_option
from workers import Worker


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("demo", help="run the order flow (orders -> inventory -> payment -> notification)")
    add_broker_option(p)
    p.add_argument("--orders", type=int, default=3, metavar="N", help="how many orders to place (default 3)")
    p.add_argument(
        "--fail-payment-every", type=int, default=3, metavar="K", help="decline the payment of every K-th order"
    )
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="give up after S seconds")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    if args.orders < 1:
        raise CliError("--orders must be at least 1")
    timeline = Timeline(expected=args.orders)
    app = build_app(timeline, fail_payment_every=args.fail_payment_every)
    print(f"broker: {mask_url(args.broker)}")
    async with await connect(args.broker) as broker:
        async with Worker(app, broker, concurrency=8):
            orders = [
                OrderPlaced(
                    order_id=f"order-{n}",
                    items=[Item(sku="book", quantity=n), Item(sku="pen", quantity=1)],
                    amount_cents=1250 * n,
                    address=f"{n} Queue Street",
                )
                for n in range(1, args.orders + 1)
            ]
            for order in orders:
                body, ctype, type_name = encode(order)
                message = Message(TOPICS["placed"], body, content_type=ctype, type=type_name, ordering_key=order.order_id)
                timeline.record("orders", order.order_id, f"placed, {len(order.items)} line(s)")
                await broker.publish(TOPICS["placed"], [message])
            try:
                await asyncio.wait_for(timeline.all_done.wait(), args.timeout)
            except asyncio.TimeoutError:
                raise CliError(f"the flow did not finish within {args.timeout:g}s") from None
    for at, service, order_id, what in timeline.entries:
        print(f"{at * 1000:8.1f} ms  {service:<12} {order_id:<10} {what}")
    confirmed = sum(1 for s in timeline.finished.values() if s == "confirmed")
    held = ", ".join(f"{sku}={n}" for sku, n in sorted(timeline.reserved.items()))
    print(f"{confirmed} confirmed, {len(timeline.finished) - confirmed} cancelled; stock reserved: {held}")
    return 0
