"""`mailbag publish TOPIC BODY`: publish messages and print the ids the broker confirmed.

A body that looks like JSON (starts with `{` or `[`) must parse, or nothing is sent: a
typo would otherwise travel as text and fail in every consumer. `--raw` sends any text.
`memory://` is refused: it lives in this one process, so what it took would be lost.

A topic no queue takes is refused, on every broker alike: an undeclared one before
anything is sent, a declared one the moment the broker says a message reached no queue
(the messages are published `mandatory`). `--declare` creates the topic and publishes
anyway; what no queue takes is then dropped and counted in one warning line.

Messages go out in runs of `RUN` and each run's ids are printed once confirmed, so
Ctrl-C (or a failure) part way leaves on stdout exactly the ids that were confirmed,
and says on stderr how many, and how many were in flight (outcome unknown)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from mailbag.broker import Broker, Message, Topology, UnknownTopic, Unroutable, connect, mask_url
from mailbag.broker.codec import JSON
from mailbag.broker.errors import ReservedHeader
from mailbag.broker.outgoing import outgoing
from mailbag.cli.common import CliError, add_broker_option, add_follow_symlinks, refuse_in_process, write_output

#: messages per broker call: what is in flight, and unknown, when the command is cut short
RUN = 500


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "body",
        metavar="BODY",
        help="the message body (JSON is sent as application/json); - reads JSON lines from stdin",
    )
    p.add_argument("--raw", action="store_true", help="send BODY as text/plain, whatever it looks like")
    add_broker_option(p)
    p.add_argument("--key", metavar="K", help="ordering key")
    p.add_argument(
        "--header", action="append", default=[], metavar="k=v", help="a header (repeat; x-mailbag-* is reserved)"
    )
    p.add_argument("--count", type=int, default=1, metavar="N", help="publish the body N times")
    p.add_argument(
        "--declare",
        action="store_true",
        help="create the topic if it does not exist, and publish even when no queue takes it (those are dropped); "
        "without it, a topic no queue takes is refused",
    )
    p.add_argument("--ids-out", metavar="FILE", help="write the confirmed ids to FILE instead of standard output")
    add_follow_symlinks(p)
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
    try:
        messages = [
            outgoing(args.topic, body, content_type=ctype, headers=headers, key=args.key)
            for body, ctype in _bodies(args.body, args.count, args.raw)
        ]
    except ReservedHeader as exc:
        raise CliError(exc.reason) from None
    refuse_in_process(args.broker, "publish to")
    ids = _Confirmed(args.topic, len(messages), args.ids_out, args.follow_symlinks)
    async with await connect(args.broker) as broker:
        try:  # inside: what was confirmed is told before the connection closes, however long that takes
            if args.declare:
                await broker.declare(Topology(topics=(args.topic,)))
            for start in range(0, len(messages), RUN):
                run = asyncio.ensure_future(_publish_run(broker, args, messages[start : start + RUN], ids))
                try:  # shielded: a Ctrl-C reaches this task at once, whatever the adapter's waits do with it
                    await asyncio.shield(run)
                except asyncio.CancelledError:
                    run.cancel()
                    raise
        except UnknownTopic:
            raise CliError(
                f"topic {args.topic!r} does not exist on {mask_url(args.broker)}, so no queue takes it: nothing "
                "sent; declare the app's topology (mailbag topology apply MODULE:APP), or pass --declare to create it"
            ) from None
        except asyncio.CancelledError:
            ids.interrupted = True
            raise
        finally:
            ids.close()
    return 0


async def _publish_run(broker: Broker, args: argparse.Namespace, run: Sequence[Message], ids: _Confirmed) -> None:
    ids.in_flight = len(run)
    try:
        await broker.publish(args.topic, run, mandatory=True)
        unrouted: set[str] = set()
    except Unroutable as exc:
        unrouted = set(exc.message_ids)
    ids.add([m.id for m in run if m.id not in unrouted], dropped=len(unrouted) if args.declare else 0)
    if unrouted and not args.declare:
        raise CliError(
            f"no queue takes messages published to topic {args.topic!r} (none is subscribed, or no filter matches): "
            f"{len(unrouted)} not sent; subscribe a queue (mailbag topology apply MODULE:APP), "
            "or pass --declare to publish anyway (they are dropped)"
        )


class _Confirmed:
    """The ids the broker confirmed: printed a run at a time, or collected for
    `--ids-out`; `close` writes the file and says on stderr how it went."""

    def __init__(self, topic: str, total: int, path: str | None, follow_symlinks: bool) -> None:
        self.topic = topic
        self.total = total
        self.path = path
        self.follow_symlinks = follow_symlinks
        self.ids: list[str] = []
        self.dropped = 0
        self.in_flight = 0
        self.interrupted = False

    def add(self, ids: list[str], dropped: int) -> None:
        self.ids += ids
        self.dropped += dropped
        self.in_flight = 0
        if self.path is None and ids:
            sys.stdout.write("\n".join(ids) + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        if self.path is not None:
            write_output(self.path, "".join(f"{i}\n" for i in self.ids), follow_symlinks=self.follow_symlinks)
        where = f"; ids in {self.path}" if self.path is not None else ""
        if self.dropped:
            print(
                f"mailbag: warning: no queue takes topic {self.topic!r}: {self.dropped} message(s) dropped "
                "(published with --declare; without it they are refused)",
                file=sys.stderr,
            )
        if self.interrupted:
            unknown = f"; {self.in_flight} more were in flight (they may have arrived)" if self.in_flight else ""
            print(
                f"mailbag: interrupted: {len(self.ids)} of {self.total} message(s) confirmed{where}{unknown}",
                file=sys.stderr,
            )
        elif self.ids and len(self.ids) + self.dropped < self.total:
            print(f"mailbag: {len(self.ids)} of {self.total} message(s) confirmed{where}; then:", file=sys.stderr)
        elif self.path is not None:
            print(f"confirmed {len(self.ids)} of {self.total} message(s){where}", file=sys.stderr)
