"""`mailbag dlq`: list, show, replay, purge and export dead letters (see `dlq`)."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mailbag.broker import Broker, connect
from mailbag.cli.common import (
    CliError,
    Parser,
    add_broker_option,
    add_follow_symlinks,
    positive_float,
    refuse_in_process,
)
from mailbag.dlq import (
    FIELD_NAMES,
    DeadLetter,
    DeadLetters,
    ExportFileError,
    NotInQueue,
    Where,
    WhereError,
    replay_file,
)


def register(p: argparse.ArgumentParser) -> None:
    verbs = p.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    verbs.required = True

    ls = _verb(verbs, "ls", "list a queue's dead letters with reason and attempts (they stay in the DLQ)")
    ls.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    ls.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="show at most N (default 50)")
    ls.add_argument("--wide", action="store_true", help="every column, however wide the terminal")
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
    replay.add_argument("--rate", type=positive_float, metavar="N", help="at most N messages per second")
    replay.add_argument("--from", dest="from_file", metavar="FILE.jsonl", help="replay an export instead of a DLQ")
    replay.set_defaults(run=_replay)

    purge = _verb(verbs, "purge", "delete dead letters for good (needs --yes)")
    _add_selection(purge)
    purge.add_argument("--yes", action="store_true", help="confirm: the messages cannot be recovered")
    purge.set_defaults(run=_purge)

    export = _verb(verbs, "export", "write every dead letter as JSON lines (they stay in the DLQ)")
    export.add_argument(
        "--out", metavar="FILE.jsonl", help="write to FILE, a regular file (default, or -: standard output)"
    )
    add_follow_symlinks(export)
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
    refuse_in_process(args.broker, "find dead letters in")
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
        print(json.dumps([_readable(r) for r in records], indent=2))
        return 0
    console = Console(width=WIDE) if args.wide else Console()
    shown = _fitting(console.width, args.wide)
    table = Table(title=f"{dead.dead_letter_queue}: {len(records)} of {ready} dead letter(s)")
    for name in shown:
        table.add_column(name, **_LS_COLUMNS[name][1])
    for r in records:
        table.add_row(*(escape(_LS_COLUMNS[name][0](r)) for name in shown))
    console.print(table)
    hidden = [name for name in _LS_COLUMNS if name not in shown]
    if hidden:
        console.print(f"({', '.join(hidden)}: --wide, or dlq show QUEUE ID)", style="dim")
    return 0


#: the width `ls --wide` lays its table out for, whatever the terminal's
WIDE = 220

#: `ls` columns, most needed first: (cell text, rich column options). A narrow terminal
#: drops columns from the end rather than cutting every cell short; long text folds.
_LS_COLUMNS: dict[str, tuple[Callable[[DeadLetter], str], dict[str, Any]]] = {
    "id": (lambda r: r.id, {"no_wrap": True, "min_width": 32}),
    "reason": (lambda r: " ".join(r.reason.split()), {"overflow": "fold", "min_width": 14, "ratio": 2}),
    "tries": (lambda r: "?" if r.attempts is None else str(r.attempts), {"no_wrap": True, "min_width": 5}),
    "error": (lambda r: r.error_type or "", {"overflow": "fold", "min_width": 12, "ratio": 1}),
    "last failed": (
        lambda r: r.last_failed_at.strftime("%Y-%m-%d %H:%M:%S") if r.last_failed_at else "",
        {"no_wrap": True, "min_width": 19},
    ),
    "topic": (lambda r: r.message.topic, {"overflow": "fold", "min_width": 12}),
    "from queue": (lambda r: r.source_queue or "", {"overflow": "fold", "min_width": 12}),
}


def _fitting(width: int, wide: bool) -> list[str]:
    """The columns that fit `width` at their minimum widths (3 for borders and padding each)."""
    if wide:
        return list(_LS_COLUMNS)
    shown: list[str] = []
    used = 1
    for name, (_, options) in _LS_COLUMNS.items():
        cost = options["min_width"] + 3
        if used + cost > width:
            break
        shown.append(name)
        used += cost
    return shown


def _readable(record: DeadLetter) -> dict[str, Any]:
    """The JSON record, with a JSON body shown as JSON (`body_encoding: json`) rather than
    base64; other bodies stay base64, as `export` writes every body."""
    data = record.model_dump(mode="json")
    body = record.message.body
    encoding = "base64"
    if record.message.content_type.split(";")[0].strip().endswith("json"):
        try:
            data["message"]["body"] = json.loads(body)
            encoding = "json"
        except ValueError:
            pass
    data["message"]["body_encoding"] = encoding
    return data


@_user_errors
async def _show(args: argparse.Namespace) -> int:
    async with await connect(args.broker) as broker:
        record = await _dead_letters(broker, args).show(args.message_id)
    if args.json:
        print(json.dumps(_readable(record), indent=2))
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
        *_failure_times(record),
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


def _failure_times(record: DeadLetter) -> list[tuple[str, object]]:
    """First and last failure where the broker recorded both; a single time is when it
    was dead-lettered, and is shown as that, not as a first failure it does not know."""
    first, last = record.first_failed_at, record.last_failed_at
    if first is not None and last is not None and first != last:
        return [("first failed", first), ("last failed", last)]
    return [("dead-lettered", last or first)]


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
    _check_selection(args)
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
        to_file = args.out not in (None, "-")
        count = await dead.export(args.out if to_file else sys.stdout, follow_symlinks=args.follow_symlinks)
    if to_file:
        print(f"exported {count} message(s) from {dead.dead_letter_queue} to {args.out}")
    return 0


def _check_selection(args: argparse.Namespace) -> None:
    """Bad selections and expressions are refused before any broker is reached."""
    if args.where is not None:
        try:
            Where(args.where)
        except WhereError as exc:
            raise CliError(str(exc)) from None
    if args.ids and args.all:
        raise CliError("use --id or --all, not both")
    if not args.ids and not args.all and args.where is None:
        raise CliError("say which messages: --id ID (repeat), --all, or --where EXPR")


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
