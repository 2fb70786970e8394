"""A TCP proxy in front of a broker (RabbitMQ, or moto_server for SNS/SQS) that drops
every connection on command, or blackholes them (open, silent), to show what clients do
when the network fails under them."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to the target. `cut()` closes every open connection;
    `refuse` makes it close new connections at once (a broker that is down but whose
    port answers); `blackhole` makes it drop every byte both ways while connections
    stay open, and hold new ones open without forwarding (a network that silently
    loses packets); `mute` drops only what the target sends back (requests arrive, no
    answer does: a publish delivered, its confirm lost). `connected` is set whenever a
    connection is forwarded; `arrivals` counts every connection the proxy accepted,
    forwarded or not."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.refuse = False
        self.blackhole = False
        self.mute = False
        self.accepted = 0
        self.arrivals = 0
        self.refused = asyncio.Event()
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        """Drop every forwarded connection, as a failing network would."""
        self.connected.clear()
        for writer in list(self._writers):
            writer.transport.abort()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.cut()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def __aenter__(self) -> CuttingProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.arrivals += 1
        if self.refuse:
            writer.transport.abort()
            self.refused.set()
            return
        if self.blackhole:
            self._writers.add(writer)
            await self._pipe(reader, None)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        self.accepted += 1
        self.connected.set()
        for src, dst, back in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.ensure_future(self._pipe(src, dst, back))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, back: bool = False) -> None:
        """Copy `src` to `dst`, or drop it while blackholed (or muted, on the way `back`)."""
        try:
            while data := await src.read(65536):
                if self.blackhole or dst is None or (back and self.mute):
                    continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if dst is not None:
                self._writers.discard(dst)
                with contextlib.suppress(Exception):
                    dst.transport.abort()
