"""`mailbag publish TOPIC BODY`: publish messages and print their ids.

A body that looks like JSON (starts with `{` or `[`) must parse, or nothing is sent: a
typo would otherwise travel as text and fail in every consumer. `--raw` sends any text.
`memory://` is refused: it lives in this one process, so what it took would be lost."""

from __future__ import annotations

import argparse
import json
import sys

from mailbag.broker import Topology, connect
from mailbag.broker.codec import JSON
from mailbag.broker.outgoing import outgoing
from mailbag.cli.common import CliError, add_broker_option, refuse_in_process


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("publish", help="publish messages to a topic and print their ids")
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "body",
        metavar="BODY",
        help="the message body (JSON is sent as application/json); - reads JSON lines from stdin",
    )
    p.add_argument("--raw", action="store_true", help="send BODY as text/plain, whatever it looks like")
    add_broker_option(p)
    p.add_argument("--key", metavar="K", help="ordering key")
    p.add_argument("--header", action="append", default=[], metavar="k=v", help="a header (repeat)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="publish the body N times")
    p.set_defaults(run=run)


def _headers(pairs: list[str]) -> dict[str, str]:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--header must look like key=value, got {pair!r}")
        headers[key] = value
    return headers


def _bodies(body: str, count: int, raw: bool) -> list[tuple[bytes, str]]:
    if count < 1:
        raise CliError("--count must be at least 1")
    if raw:
        return [(body.encode(), "text/plain")] * count
    if body != "-":
        return [_typed(body)] * count
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    for n, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError as exc:
            raise CliError(f"stdin line {n} is not JSON: {exc}") from None
    return [(line.encode(), JSON) for line in lines] * count


def _typed(body: str) -> tuple[bytes, str]:
    try:
        json.loads(body)
    except ValueError as exc:
        if body.lstrip().startswith(("{", "[")):
            raise CliError(
                f"BODY looks like JSON but does not parse ({exc}); fix it, or pass --raw to send text"
            ) from None
        return body.encode(), "text/plain"
    return body.encode(), JSON


async def run(args: argparse.Namespace) -> int:
    headers = _headers(args.header)
    messages = [
        outgoing(args.topic, body, content_type=ctype, headers=headers, key=args.key)
        for body, ctype in _bodies(args.body, args.count, args.raw)
    ]
    refuse_in_process(args.broker, "publish to")
    async with await connect(args.broker) as broker:
        await broker.declare(Topology(topics=(args.topic,)))
        await broker.publish(args.topic, messages)
    for m in messages:
        print(m.id)
    return 0
