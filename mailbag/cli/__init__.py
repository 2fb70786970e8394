"""The `mailbag` command line. Each command lives in its own module, named as the
command, whose `register(parser)` adds its arguments; `COMMANDS` is the one list of
them, with the line each shows in `mailbag --help`.

Only the module of the command given is imported (with what it needs), and only after
Ctrl-C is handled: `mailbag --help` loads no broker SDK, and an interrupt at any
moment exits with status 130 and no traceback (see `mailbag.cli.interrupt`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailbag.cli.common import Parser

#: command -> its line in `mailbag --help`; the module `mailbag.cli.<command>` registers it
COMMANDS = {
    "demo": "run the order flow (orders -> inventory -> payment -> notification) as events or as a saga",
    "worker": "run an app's handlers until SIGINT/SIGTERM",
    "health": "exit 0 if the worker on --port is ready (or alive: --probe liveness), else 1",
    "publish": "publish messages to a topic and print their ids",
    "queues": "list queues with ready / in-flight / dead-letter counts",
    "topology": "work with an app's topology",
    "dlq": "list, show, replay, purge and export dead letters",
    "outbox": "relay the transactional outbox to the broker; show or prune it",
    "compare": "compare brokers on ordering, redelivery, crashes, dead letters, fan-out, latency",
    "docs": "write an app's AsyncAPI 3.0 document (topics, queues, handlers, payloads)",
}

#: the exit status of a command cut short by Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130


def build_parser(argv: list[str] | None = None) -> Parser:
    """The parser, with the arguments of the command `argv` names (every command's, when
    `argv` is None): the others get their name and help line only, so their modules
    and what they import stay unloaded."""
    import importlib

    from mailbag.cli.common import Parser

    parser = Parser(
        prog="mailbag",
        description="Work queues on RabbitMQ, SNS/SQS or in memory: run workers, publish, inspect.",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    subs.required = True
    given = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, help in COMMANDS.items():
        sub = subs.add_parser(name, help=help, description=help)
        if given is None or given == name:
            importlib.import_module(f"mailbag.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        return INTERRUPTED


def _main(argv: list[str]) -> int:
    import asyncio

    from mailbag.broker.errors import MailbagError
    from mailbag.cli.common import libraries_quiet, report
    from mailbag.cli.interrupt import run_cancellable

    args = build_parser(argv).parse_args(argv)
    try:
        with libraries_quiet():
            result = args.run(args)
            if asyncio.iscoroutine(result):
                result = run_cancellable(result)
        return int(result or 0)
    except (MailbagError, OSError) as exc:
        return report(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
