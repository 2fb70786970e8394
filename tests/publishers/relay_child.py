"""A relay in a process of its own, for the crash test: it appends every id the broker
confirmed to `--log`, and with `--hang-after N` it stops for good right after the
confirm that takes it to N ids, before the rows are marked sent, so the test can
SIGKILL it mid-batch. SIGTERM stops it cleanly.

    python -m tests.publishers.relay_child --db URL --table T --broker URL --log PATH
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

from mailbag.broker import Message, connect
from mailbag.broker.delegating import Delegating
from mailbag.publishers import Publisher, PublisherSettings
from mailbag.publishers.outbox import Relay, RelaySettings, open_outbox


class Logged(Delegating):
    def __init__(self, inner, log: Path, hang_after: int) -> None:
        super().__init__(inner)
        self.log = log
        self.hang_after = hang_after
        self.confirmed = 0

    async def publish(self, topic: str, messages: Sequence[Message], *, mandatory: bool = False) -> None:
        await super().publish(topic, messages, mandatory=mandatory)
        with open(self.log, "a") as fh:
            fh.write("".join(f"{m.id}\n" for m in messages))
            fh.flush()
            os.fsync(fh.fileno())
        self.confirmed += len(messages)
        if self.hang_after and self.confirmed >= self.hang_after:
            Path(f"{self.log}.hung").touch()
            await asyncio.Event().wait()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--table", required=True)
    p.add_argument("--broker", required=True)
    p.add_argument("--log", required=True, type=Path)
    p.add_argument("--hang-after", type=int, default=0)
    p.add_argument("--batch", type=int, default=100)
    args = p.parse_args()
    async with await connect(args.broker) as broker, open_outbox(args.db, table=args.table) as outbox:
        publisher = Publisher(
            Logged(broker, args.log, args.hang_after), settings=PublisherSettings(attempt_timeout=3600)
        )
        relay = Relay(outbox, publisher, RelaySettings(batch_size=args.batch, poll_interval=0.1))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, relay.stop)
        await relay.run()


if __name__ == "__main__":
    asyncio.run(main())
