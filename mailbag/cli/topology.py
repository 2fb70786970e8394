"""`mailbag topology apply MODULE:APP`: declare an app's topics and queues.
`mailbag topology export MODULE:APP --format cloudformation`: write them as a template
to deploy instead (see docs/aws.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from mailbag.broker import connect, mask_url
from mailbag.cli.common import CliError, add_broker_option, load_app
from mailbag.deploy.cloudformation import DEFAULT_VISIBILITY, template

FORMATS = ("cloudformation",)


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("topology", help="work with an app's topology")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    apply = verbs.add_parser("apply", help="declare an app's topics, queues and dead-letter queues")
    apply.add_argument("app", metavar="MODULE:APP")
    add_broker_option(apply)
    apply.set_defaults(run=run_apply)
    export = verbs.add_parser("export", help="write an app's topology as infrastructure to deploy")
    export.add_argument("app", metavar="MODULE:APP")
    export.add_argument("--format", required=True, choices=FORMATS, help="cloudformation: an AWS template (JSON)")
    export.add_argument("--output", "-o", metavar="FILE", help="write here (default: standard output)")
    export.add_argument(
        "--prefix", default="", help="put before every SNS/SQS name; give workers the same: sqs://?prefix=..."
    )
    export.add_argument(
        "--visibility",
        type=int,
        default=DEFAULT_VISIBILITY,
        metavar="SECONDS",
        help=f"queue visibility timeout (default {DEFAULT_VISIBILITY}; for Lambda, at least the function's timeout)",
    )
    export.set_defaults(run=run_export)


async def run_apply(args: argparse.Namespace) -> int:
    app = load_app(args.app)
    topology = app.topology
    async with await connect(args.broker) as broker:
        await broker.declare(topology)
    print(f"declared {len(topology.topics)} topic(s) and {len(topology.queues)} queue(s) on {mask_url(args.broker)}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    topology = load_app(args.app).topology
    try:
        text = json.dumps(template(topology, prefix=args.prefix, visibility=args.visibility), indent=2) + "\n"
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.output is None:
        sys.stdout.write(text)
        return 0
    _write_whole(args.output, text)
    print(
        f"wrote a CloudFormation template for {len(topology.topics)} topic(s) and "
        f"{len(topology.queues)} queue(s) to {args.output}",
        file=sys.stderr,
    )
    return 0


def _write_whole(path: str, text: str) -> None:
    """Write through a temporary file, so a failed export leaves no half template."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp") as fh:
            try:
                fh.write(text)
            except OSError:
                os.unlink(fh.name)
                raise
        os.replace(fh.name, path)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None
