"""Several worker processes under one supervisor: `mailbag worker --processes N`.

One Python process runs one event loop on one core; CPU-bound handlers need more
processes. The supervisor starts N children, each a `mailbag worker` with the same
arguments, and:

- restarts a child that exits without being asked to, after a backoff that doubles
  from `RESTART_BACKOFF` up to `MAX_BACKOFF` (reset once a child has run `STABLE`
  seconds), so a worker that cannot start does not spin;
- forwards SIGTERM and SIGINT to every child (a second signal too, which cuts their
  grace period short) and exits once all children have: 0 if every child exited 0,
  1 if any child failed at any point;
- gives child `i` the metrics port `P + i` when `--metrics-port P` is set, so each
  process serves its own /metrics and probes.

It never touches the broker or the handlers: each child is an ordinary worker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Mapping, Sequence

log = logging.getLogger("mailbag.supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: first wait before a dead child is started again, in seconds; doubles per death
RESTART_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: a child that ran this long before dying is restarted after the first backoff again
STABLE = 60.0


class Supervisor:
    """Runs `command` (the argv of one worker process, which takes `--metrics-port` and
    `--processes`) `processes` times, with `env` as its environment."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        env: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env) if env is not None else None
        self.processes = processes
        self.metrics_port = metrics_port
        self.failed = False
        self._stopping = asyncio.Event()
        self._signals: list[int] = []
        self._children: dict[int, asyncio.subprocess.Process] = {}

    def argv(self, index: int) -> list[str]:
        port = [] if self.metrics_port is None else ["--metrics-port", str(self.metrics_port + index)]
        return [*self.command, *port, "--processes", "1"]

    async def run(self) -> int:
        """Supervise until a signal and every child has exited; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await asyncio.gather(*(self._keep(i) for i in range(self.processes)))
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
        return 1 if self.failed else 0

    def _on_signal(self, signum: int) -> None:
        self._signals.append(signum)
        name = signal.Signals(signum).name
        log.info("%s: passing it to %d worker process(es)", name, len(self._children))
        self._stopping.set()
        for child in self._children.values():
            if child.returncode is None:
                child.send_signal(signum)

    async def _keep(self, index: int) -> None:
        """Child `index`, started again each time it dies until the supervisor stops."""
        backoff = RESTART_BACKOFF
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            child = await asyncio.create_subprocess_exec(*self.argv(index), env=self.env)
            self._children[index] = child
            log.info("worker process %d started (pid %d)", index, child.pid)
            if self._stopping.is_set():  # a signal came while it was starting
                child.send_signal(self._signals[-1])
            code = await child.wait()
            if code != 0:
                self.failed = True
            if self._stopping.is_set():
                log.info("worker process %d (pid %d) exited with %d", index, child.pid, code)
                return
            backoff = RESTART_BACKOFF if loop.time() - started >= STABLE else backoff
            log.error(
                "worker process %d (pid %d) died with %d; starting it again in %.1fs", index, child.pid, code, backoff
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
            except TimeoutError:
                pass
            backoff = min(MAX_BACKOFF, backoff * 2)
