"""`mailbag dlq`: list, show, replay, purge and export dead letters (see `dlq`)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailbag.broker import Broker, connect
from mailbag.cli.common import CliError, Parser, add_broker_option
from mailbag.dlq import FIELD_NAMES, DeadLetters, ExportFileError, NotInQueue, WhereError, replay_file


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("dlq", help="list, show, replay, purge and export dead letters")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True

    ls = _verb(verbs, "ls", "list a queue's dead letters with reason and attempts (they stay in the DLQ)")
    ls.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="show at most N (default 50)")
    ls.set_defaults(run=_ls)

    show = _verb(verbs, "show", "one dead letter in full: reason, error, traceback, headers, body")
    show.add_argument("message_id", metavar="MESSAGE_ID")
    show.add_argument("--json", action="store_true", help="print the JSON record")
    show.set_defaults(run=_show)

    replay = _verb(
        verbs, "replay", "send dead letters back to their queue, then remove them from the DLQ", queue_nargs="?"
    )
    _add_selection(replay)
    replay.add_argument("--to", metavar="QUEUE", help="send to this queue instead of the one each died in")
    replay.add_argument("--rate", type=_positive_float, metavar="N", help="at most N messages per second")
    replay.add_argument("--from", dest="from_file", metavar="FILE.jsonl", help="replay an export instead of a DLQ")
    replay.set_defaults(run=_replay)

    purge = _verb(verbs, "purge", "delete dead letters for good (needs --yes)")
    _add_selection(purge)
    purge.add_argument("--yes", action="store_true", help="confirm: the messages cannot be recovered")
    purge.set_defaults(run=_purge)

    export = _verb(verbs, "export", "write every dead letter as JSON lines (they stay in the DLQ)")
    export.add_argument("--out", metavar="FILE.jsonl", help="write to FILE (default: standard output)")
    export.set_defaults(run=_export)


def _verb(verbs: argparse._SubParsersAction, name: str, help: str, queue_nargs: str | None = None) -> Parser:
    parser = verbs.add_parser(name, help=help, description=help)
    add_broker_option(parser)
    parser.add_argument(
        "queue",
        nargs=queue_nargs,
        metavar="QUEUE",
        help="the queue whose dead letters to use (its DLQ is QUEUE.dlq); a name ending in .dlq is the DLQ itself",
    )
    parser.add_argument("--dlq", metavar="NAME", help="the dead-letter queue, when it is not named QUEUE.dlq")
    return parser


def _add_selection(parser: Parser) -> None:
    parser.add_argument("--id", dest="ids", action="append", default=[], metavar="ID", help="a message id (repeat)")
    parser.add_argument("--all", action="store_true", help="every dead letter (narrowed by --where if given)")
    parser.add_argument(
        "--where",
        metavar="EXPR",
        help=f"only records matching EXPR, e.g. 'attempts >= 3 and error_type == \"TimeoutError\"'; "
        f"names: {', '.join(FIELD_NAMES)}",
    )


def _user_errors(run: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], Awaitable[int]]:
    """Bad selections, expressions, files and ids are the user's to fix: one line, exit 2."""

    @functools.wraps(run)
    async def wrapper(args: argparse.Namespace) -> int:
        try:
            return await run(args)
        except (WhereError, ExportFileError, NotInQueue) as exc:
            raise CliError(str(exc)) from None

    return wrapper


def _dead_letters(broker: Broker, args: argparse.Namespace) -> DeadLetters:
    if not args.queue:
        raise CliError("name the QUEUE whose dead letters to use")
    return DeadLetters(broker, args.queue, dead_letter_queue=args.dlq)


@_user_errors
async def _ls(args: argparse.Namespace) -> int:
    async with await connect(args.broker) as broker:
        dead = _dead_letters(broker, args)
        records = await dead.ls(limit=args.limit)
        ready = (await broker.stats(dead.dead_letter_queue)).ready
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return 0
    table = Table(title=f"{dead.dead_letter_queue}: {len(records)} of {ready} dead letter(s)")
    table.add_column("id", no_wrap=True)
    for name in ("topic", "reason", "error", "attempts", "last failed", "from queue"):
        table.add_column(name)
    for r in records:
        table.add_row(
            r.id,
            r.message.topic,
            escape(_short(r.reason, 60)),
            escape(r.error_type or ""),
            "?" if r.attempts is None else str(r.attempts),
            r.last_failed_at.strftime("%Y-%m-%d %H:%M:%S") if r.last_failed_at else "",
            r.source_queue or "",
        )
    Console().print(table)
    return 0


@_user_errors
async def _show(args: argparse.Namespace) -> int:
    async with await connect(args.broker) as broker:
        record = await _dead_letters(broker, args).show(args.message_id)
    if args.json:
        print(record.model_dump_json(indent=2))
        return 0
    console = Console()
    table = Table(show_header=False, box=None)
    m = record.message
    for name, value in (
        ("id", m.id),
        ("topic", m.topic),
        ("from queue", record.source_queue),
        ("dead-letter queue", record.dead_letter_queue),
        ("reason", record.reason),
        ("error", record.error_type),
        ("error message", record.error_message),
        ("attempts", record.attempts),
        ("first failed", record.first_failed_at),
        ("last failed", record.last_failed_at),
        ("worker host", record.worker_host),
        ("content type", m.content_type),
        ("type", m.type),
        ("correlation id", m.correlation_id),
        ("causation id", m.causation_id),
        ("ordering key", m.ordering_key),
        ("created", m.created_at),
    ):
        if value is not None:
            table.add_row(f"[bold]{name}[/]", escape(str(value)))
    for key, header in m.headers.items():
        table.add_row(f"[bold]header[/] {escape(key)}", escape(repr(header)))
    console.print(table)
    console.rule("body")
    try:
        console.print(escape(m.body.decode("utf-8")), highlight=False)
    except UnicodeDecodeError:
        console.print(f"({len(m.body)} bytes, not UTF-8: use --json for the base64 body)")
    if record.traceback:
        console.rule("traceback")
        console.print(escape(record.traceback), highlight=False)
    return 0


@_user_errors
async def _replay(args: argparse.Namespace) -> int:
    if args.from_file:
        if args.queue or args.ids or args.all or args.where or args.dlq:
            raise CliError("--from replays a file: QUEUE, --dlq, --id, --all and --where do not apply")
        async with await connect(args.broker) as broker:
            with _progress("replaying") as on_progress:
                sent = await replay_file(broker, args.from_file, to=args.to, rate=args.rate, on_progress=on_progress)
        print(f"replayed {len(sent)} message(s) from {args.from_file}")
        return 0
    _check_selection(args)
    async with await connect(args.broker) as broker:
        dead = _dead_letters(broker, args)
        with _progress("replaying") as on_progress:
            result = await dead.replay(
                ids=args.ids, all=args.all, where=args.where, to=args.to, rate=args.rate, on_progress=on_progress
            )
    print(
        f"replayed {result.removed} message(s) from {dead.dead_letter_queue} to {args.to or 'the queues they died in'}"
    )
    return _report_missing(result.missing, dead)


@_user_errors
async def _purge(args: argparse.Namespace) -> int:
    _check_selection(args, require_explicit=True)
    if not args.yes:
        raise CliError("purge deletes dead letters for good; add --yes to confirm")
    async with await connect(args.broker) as broker:
        dead = _dead_letters(broker, args)
        with _progress("purging") as on_progress:
            result = await dead.purge(ids=args.ids, all=args.all, where=args.where, on_progress=on_progress)
    print(f"purged {result.removed} message(s) from {dead.dead_letter_queue}")
    return _report_missing(result.missing, dead)


@_user_errors
async def _export(args: argparse.Namespace) -> int:
    async with await connect(args.broker) as broker:
        dead = _dead_letters(broker, args)
        count = await dead.export(args.out or sys.stdout)
    if args.out:
        print(f"exported {count} message(s) from {dead.dead_letter_queue} to {args.out}")
    return 0


def _check_selection(args: argparse.Namespace, require_explicit: bool = False) -> None:
    if args.ids and args.all:
        raise CliError("use --id or --all, not both")
    if not args.ids and not args.all and (require_explicit or args.where is None):
        raise CliError(
            "say which messages: --id ID (repeat), --all" + ("" if require_explicit else ", or --where EXPR")
        )


def _report_missing(missing: list[str], dead: DeadLetters) -> int:
    if not missing:
        return 0
    print(f"mailbag: not found in {dead.dead_letter_queue}: {', '.join(missing)}", file=sys.stderr)
    return 1


class _progress:
    """A rich progress bar on standard error, fed by the operation's `on_progress`. It
    appears with the first message, so an error found before any work prints alone."""

    def __init__(self, verb: str) -> None:
        self._bar = Progress(
            TextColumn(verb), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True)
        )
        self._task = self._bar.add_task(verb, total=None)
        self._started = False

    def __enter__(self) -> Callable[[int, int], None]:
        return self._update

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._bar.stop()

    def _update(self, done: int, total: int) -> None:
        if not self._started:
            self._bar.start()
            self._started = True
        self._bar.update(self._task, completed=done, total=total)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
