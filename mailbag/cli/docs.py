"""`mailbag docs MODULE:APP`: the app's AsyncAPI 3.0 document, for the teams that talk
to it (see `mailbag.deploy.asyncapi`)."""

from __future__ import annotations

import argparse
import json

import yaml

from mailbag.cli.common import add_follow_symlinks, load_app, write_output
from mailbag.deploy.asyncapi import document


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="MODULE:APP", help="the App to document, e.g. myservice.handlers:app")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="document format (default yaml)")
    p.add_argument("--out", metavar="FILE", help="write here, a regular file (default, or -: standard output)")
    add_follow_symlinks(p)
    p.add_argument("--version", default="1.0.0", metavar="V", help="the document's info.version (default 1.0.0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    doc = document(load_app(args.app), version=args.version)
    text = (
        json.dumps(doc, indent=2) + "\n"
        if args.format == "json"
        else yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    )
    if write_output(args.out, text, follow_symlinks=args.follow_symlinks):
        print(f"wrote {args.out}")
    return 0
