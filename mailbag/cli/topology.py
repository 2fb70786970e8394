"""`mailbag topology apply MODULE:APP`: declare an app's topics and queues.
`mailbag topology export MODULE:APP --format cloudformation [--lambda HANDLER]`: write
them as a template to deploy instead, with a Lambda function and trigger per queue if
asked (see docs/aws.md)."""

from __future__ import annotations

import argparse
import json
import sys

from mailbag.broker import TopologyError, connect, mask_url
from mailbag.cli.common import CliError, add_broker_option, add_follow_symlinks, load_app, write_output
from mailbag.deploy.cloudformation import (
    DEFAULT_VISIBILITY,
    INLINE_TEMPLATE_MAX,
    LAMBDA_VISIBILITY_FACTOR,
    LambdaFunctions,
    template,
)

FORMATS = ("cloudformation",)


def register(p: argparse.ArgumentParser) -> None:
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    apply = verbs.add_parser("apply", help="declare an app's topics, queues and dead-letter queues")
    apply.add_argument("app", metavar="MODULE:APP")
    add_broker_option(apply)
    apply.set_defaults(run=run_apply)
    export = verbs.add_parser("export", help="write an app's topology as infrastructure to deploy")
    export.add_argument("app", metavar="MODULE:APP")
    export.add_argument("--format", required=True, choices=FORMATS, help="cloudformation: an AWS template (JSON)")
    export.add_argument(
        "--output", "-o", metavar="FILE", help="write here, a regular file (default, or -: standard output)"
    )
    add_follow_symlinks(export)
    export.add_argument(
        "--prefix", default="", help="put before every SNS/SQS name; give workers the same: sqs://?prefix=..."
    )
    export.add_argument(
        "--visibility",
        type=int,
        metavar="SECONDS",
        help=f"queue visibility timeout (default {DEFAULT_VISIBILITY}; with --lambda, "
        f"{LAMBDA_VISIBILITY_FACTOR} x --lambda-timeout, the least it may be)",
    )
    export.add_argument(
        "--lambda",
        dest="lambda_handler",
        metavar="HANDLER",
        help="add a Lambda function per queue, with its role and SQS trigger: HANDLER is the function handler, "
        "module.attribute, naming what handler_for(app) made",
    )
    export.add_argument(
        "--lambda-queue",
        action="append",
        metavar="Q",
        help="only this queue gets a Lambda function; repeat for more (default: every queue)",
    )
    export.add_argument("--lambda-timeout", type=int, metavar="SECONDS", help="the functions' timeout (default 30)")
    export.add_argument(
        "--retain-queues",
        action="store_true",
        help="keep the queues too, not only the dead-letter queues, when the stack is deleted or replaces them",
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
    app = load_app(args.app)
    topology = app.topology
    if args.lambda_handler is None and (args.lambda_queue or args.lambda_timeout is not None):
        raise CliError("--lambda-queue and --lambda-timeout go with --lambda HANDLER")
    try:
        functions = None
        if args.lambda_handler is not None:
            functions = LambdaFunctions(
                args.lambda_handler,
                queues=tuple(args.lambda_queue or ()),
                **({} if args.lambda_timeout is None else {"timeout": args.lambda_timeout}),
                idempotency=any(h.idempotency is not False for h in app.handlers.values()),
            )
        built = template(
            topology,
            prefix=args.prefix,
            visibility=args.visibility,
            functions=functions,
            retain_queues=args.retain_queues,
        )
    except (ValueError, TopologyError) as exc:
        raise CliError(str(exc)) from None
    text = json.dumps(built, indent=2) + "\n"
    if not write_output(args.output, text, follow_symlinks=args.follow_symlinks):
        _say_if_too_large_inline(text)
        return 0
    functions = sum(r["Type"] == "AWS::Lambda::Function" for r in built["Resources"].values())
    what = f"{len(topology.topics)} topic(s) and {len(topology.queues)} queue(s)"
    if functions:
        what = f"{len(topology.topics)} topic(s), {len(topology.queues)} queue(s) and {functions} Lambda function(s)"
    print(f"wrote a CloudFormation template for {what} to {args.output}", file=sys.stderr)
    _say_if_too_large_inline(text)
    return 0


def _say_if_too_large_inline(text: str) -> None:
    size = len(text.encode())
    if size > INLINE_TEMPLATE_MAX:
        print(
            f"the template is {size:,} bytes, over the {INLINE_TEMPLATE_MAX:,} CloudFormation takes inline: "
            "deploy it with `aws cloudformation deploy --s3-bucket BUCKET ...`, which uploads it first",
            file=sys.stderr,
        )
