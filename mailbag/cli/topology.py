"""`mailbag topology apply MODULE:APP`: declare an app's topics and queues."""

from __future__ import annotations

import argparse

from broker import connect, mask_url
from mailbag.cli.common import add_broker_option, load_app


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("topology", help="work with an app's topology")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    apply = verbs.add_parser("apply", help="declare an app's topics, queues and dead-letter queues")
    apply.add_argument("app", metavar="MODULE:APP")
    add_broker_option(apply)
    apply.set_defaults(run=run_apply)


async def run_apply(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    topology = app.topology
    async with await connect(args.broker) as broker:
        await broker.declare(topology)
    print(f"declared {len(topology.topics)} topic(s) and {len(topology.queues)} queue(s) on {mask_url(args.broker)}")
    return 0
