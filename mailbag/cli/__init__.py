"""The `mailbag` command line. Each command lives in its own module and registers its
sub-parser; `COMMANDS` is the one list of them."""

from __future__ import annotations

import asyncio
import sys

from mailbag.broker.errors import MailbagError
from mailbag.cli import compare, demo, dlq, docs, health, outbox, publish, queues, topology, worker
from mailbag.cli.common import Parser, libraries_quiet, report

COMMANDS = [demo, worker, health, publish, queues, topology, dlq, outbox, compare, docs]


def build_parser() -> Parser:
    parser = Parser(
        prog="mailbag",
        description="Work queues on RabbitMQ, SNS/SQS or in memory: run workers, publish, inspect.",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subs.required = True
    for module in COMMANDS:
        module.register(subs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with libraries_quiet():
            result = args.run(args)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
        return int(result or 0)
    except KeyboardInterrupt:
        return 130
    except (MailbagError, OSError) as exc:
        return report(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
