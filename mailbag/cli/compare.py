"""`mailbag compare`: run the comparison harness on one or more brokers and write its
report (JSON, charts, index.md), with progress bars while it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from mailbag.broker import BrokerUrlError
from mailbag.cli.common import CliError
from mailbag.harness import SCENARIOS, Settings, Target, compare
from mailbag.harness.result import ScenarioResult
from mailbag.harness.timing import LISTEN_MARGIN, PATIENCE_MARGIN

DEFAULT_BROKERS = ["memory://"]
DEFAULT_OUT = "mailbag-compare"
WIDE = 160


def register(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run the comparison scenarios on each broker and write results.json, PNG charts and "
        "index.md. Queue options in the URL pick the variant: ?queue=quorum (RabbitMQ queue type), "
        "?fifo=1 or ?ordered=1 (order per key), ?label=NAME. Exit status 1 if any message was lost."
    )
    p.add_argument(
        "--broker",
        action="append",
        metavar="URL",
        help="a broker to compare (repeat), e.g. memory://, amqp://guest:guest@127.0.0.1/?queue=quorum, "
        "sqs://?endpoint=http://127.0.0.1:5000&fifo=1 (default: memory://)",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"a scenario to run (repeat; default all): {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=Settings.messages,
        metavar="N",
        help=f"messages per scenario (default {Settings.messages})",
    )
    p.add_argument(
        "--patience",
        type=float,
        metavar="S",
        help="count what has not arrived after S seconds without any delivery as lost (default: the longest "
        f"each broker may take to hand a message out, + {PATIENCE_MARGIN:g}s: SQS's visibility timeout or "
        f"long-poll wait, RabbitMQ's two heartbeats, at once on memory)",
    )
    p.add_argument(
        "--listen",
        type=float,
        metavar="S",
        help="once every message arrived, keep listening S seconds for late duplicates (default: each broker's "
        f"redelivery time + {LISTEN_MARGIN:g}s: SQS's visibility timeout, RabbitMQ's two heartbeats, at once on "
        "memory); the report states both figures and why",
    )
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"report directory (default ./{DEFAULT_OUT})")
    p.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    try:
        targets = [Target.parse(url) for url in args.broker or DEFAULT_BROKERS]
    except BrokerUrlError as exc:
        raise CliError(str(exc)) from None
    try:
        settings = Settings(messages=args.messages, idle_timeout=args.patience, grace=args.listen)
    except ValueError as exc:
        flags = {"idle_timeout": "--patience", "messages": "--messages", "grace": "--listen"}
        raise CliError(" ".join(flags.get(word, word) for word in str(exc).split(" "))) from None
    labels = [t.label for t in targets]
    if len(set(labels)) < len(labels):
        raise CliError("two brokers have the same label; tell them apart with ?label=NAME")
    scenarios = list(dict.fromkeys(args.scenario or SCENARIOS))
    out = Path(args.out)
    if out.exists() and not out.is_dir():  # noqa: ASYNC240 - one stat before any work
        raise CliError(f"--out {out} exists and is not a directory")
    try:  # here, not at the top: other mailbag commands never load matplotlib
        from mailbag.harness.report import render, write
    except ImportError as exc:
        raise CliError(f"mailbag compare draws charts with matplotlib ({exc}); pip install 'mailbag[charts]'") from None

    stderr = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
    ) as bars:
        report = await compare(targets, scenarios, settings, progress=_Bars(bars, len(targets) * len(scenarios)))
    console = Console()
    # a pipe or file gets the table wide enough to read, not wrapped at 80 columns
    (console if console.is_terminal else Console(width=WIDE)).print(render(report))
    for path in write(report, out):
        if path.suffix == ".md":
            print(f"report: {path}")
    return 1 if report.failed else 0


class _Bars:
    """One bar for the whole run, and one for the scenario running now."""

    def __init__(self, bars: Progress, total: int) -> None:
        self.bars = bars
        self.overall = bars.add_task("all scenarios", total=total)
        self.current: TaskID | None = None

    def begin(self, broker: str, scenario: str) -> _Bars:
        self.current = self.bars.add_task(f"{broker} / {scenario}", total=None)
        return self

    def expect(self, total: int) -> None:
        if self.current is not None:
            self.bars.update(self.current, total=total)

    def tick(self, n: int = 1) -> None:
        if self.current is not None:
            self.bars.advance(self.current, n)

    def end(self, result: ScenarioResult) -> None:
        if self.current is not None:
            self.bars.remove_task(self.current)
            self.current = None
        self.bars.advance(self.overall)
