"""`mailbag docs MODULE:APP`: the app's AsyncAPI 3.0 document, for the teams that talk
to it (see `mailbag.deploy.asyncapi`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from mailbag.cli.common import CliError, load_app
from mailbag.deploy.asyncapi import document


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("docs", help="write an app's AsyncAPI 3.0 document (topics, queues, handlers, payloads)")
    p.add_argument("app", metavar="MODULE:APP", help="the App to document, e.g. myservice.handlers:app")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="document format (default yaml)")
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.add_argument("--version", default="1.0.0", metavar="V", help="the document's info.version (default 1.0.0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    doc = document(load_app(args.app), version=args.version)
    text = (
        json.dumps(doc, indent=2) + "\n"
        if args.format == "json"
        else yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: folder {out.parent} does not exist")
    out.write_text(text)
    print(f"wrote {out}")
    return 0
