"""`mailbag worker MODULE:APP`: run an app's handlers until SIGINT or SIGTERM.

Settings come from `MAILBAG_*` environment variables (see `mailbag.workers.WorkerSettings`);
flags given on the command line win over them. With `--metrics-port` the worker
records metrics and serves /metrics, /healthz and /readyz (see `mailbag.workers.endpoints`).
With `--processes N` it runs N such workers under a supervisor (`mailbag.workers.supervisor`).

What the worker settles is counted (`Tally`): every `--summary-every` seconds in which
something happened it logs one line, "handled N, retried N, dead-lettered N" since the
start, and with `-v` one INFO line per message handled. Failures are logged by the
worker itself, one WARNING each."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext

from pydantic import ValidationError

from mailbag.broker import Delivery, connect, mask_url
from mailbag.broker.errors import MailbagError
from mailbag.broker.url import scheme_of
from mailbag.cli.common import CliError, add_broker_option, load_app, positive_float, quiet_libraries
from mailbag.workers import Worker, WorkerSettings, logs
from mailbag.workers.endpoints import Endpoints
from mailbag.workers.metrics import Metrics, Settlement
from mailbag.workers.runtime import CLOSE_TIMEOUT
from mailbag.workers.shutdown import serve
from mailbag.workers.stores import store_factory
from mailbag.workers.supervisor import Supervisor

log = logging.getLogger("mailbag.worker")


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("app", metavar="MODULE:APP", help="the App to run, e.g. myservice.handlers:app")
    add_broker_option(p)
    # unset unless given: the settings read $MAILBAG_BROKER_URL, and know whether a URL was given at all
    p.set_defaults(broker=None)
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="handlers in flight at once ($MAILBAG_CONCURRENCY, 100)"
    )
    p.add_argument(
        "--prefetch", type=int, metavar="N", help="unsettled deliveries per queue ($MAILBAG_PREFETCH, 2 x concurrency)"
    )
    p.add_argument(
        "--queue", action="append", metavar="Q", help="consume only this queue; repeat for more ($MAILBAG_QUEUES)"
    )
    p.add_argument(
        "--grace-period",
        type=float,
        metavar="S",
        help="seconds in-flight handlers get on shutdown ($MAILBAG_GRACE_PERIOD, 30)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve /metrics, /healthz and /readyz on this port ($MAILBAG_METRICS_PORT; default: no metrics)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="ADDR",
        help="address to serve them on ($MAILBAG_METRICS_HOST; default 0.0.0.0, all interfaces)",
    )
    p.add_argument(
        "--idempotency-url",
        metavar="URL",
        help="where handled messages are recorded ($MAILBAG_IDEMPOTENCY_URL; default "
        "sqlite:///.mailbag/idempotency.sqlite3, in memory for memory://)",
    )
    p.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as key=value text or JSON ($MAILBAG_LOG_FORMAT, text)"
    )
    p.add_argument(
        "-v", "--verbose", action="store_true", help="log one INFO line per message handled (failures always are)"
    )
    p.add_argument(
        "--summary-every",
        type=positive_float,
        default=SUMMARY_EVERY,
        metavar="S",
        help=f"seconds between the 'handled N, retried N, dead-lettered N' lines, when counts changed "
        f"(default {SUMMARY_EVERY:g})",
    )
    p.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="worker processes under one supervisor, for CPU-bound handlers ($MAILBAG_PROCESSES, 1)",
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> WorkerSettings:
    """The environment's settings with the flags given on top; one line on a bad value."""
    flags = {
        "broker_url": args.broker,
        "concurrency": args.concurrency,
        "prefetch": args.prefetch,
        "queues": tuple(args.queue) if args.queue else None,
        "grace_period": args.grace_period,
        "metrics_port": args.metrics_port,
        "metrics_host": args.metrics_host,
        "log_format": args.log_format,
        "idempotency_url": args.idempotency_url,
        "processes": args.processes,
    }
    try:
        return WorkerSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a rule across settings: its message says it all
            raise CliError(str(first["msg"]).removeprefix("Value error, ")) from None
        raise CliError(f"bad worker setting {first['loc'][0]}: {first['msg']}") from None


async def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    app = load_app(args.app)
    store_url = settings.store_url(settings.broker_url)
    try:
        open_store = store_factory(store_url)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format)
    if settings.processes > 1:
        return await supervise(args, settings)
    broker = await connect(settings.broker_url)
    worker: Worker | None = None
    try:
        # connected: from here on the libraries' warnings say something about a running worker
        quiet_libraries(logging.NOTSET if settings.log_level.upper() == "DEBUG" else logging.WARNING)
        try:  # opened here, not by the worker, so a store that cannot open is the one line printed
            store = await open_store(store_url)
        except (OSError, MailbagError) as exc:
            raise CliError(f"idempotency store {mask_url(store_url)}: {exc}") from None
        try:
            metrics = Metrics() if settings.metrics_port is not None else None
            try:
                worker = Worker(app, broker, settings=settings, metrics=metrics, store=store)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            _announce(settings)
            tally = Tally(verbose=args.verbose)
            worker.on_settled = tally.count
            with (
                nullcontext() if metrics is None else _serving(worker, metrics, settings),
                tally.every(args.summary_every),
            ):
                return await serve(worker)
        finally:
            if worker is not None and worker.forced:
                _exit_now()
            await _close("idempotency store", store.close)
    finally:
        await _close("broker", broker.close)


def _announce(settings: WorkerSettings) -> None:
    """Say once where the worker's state lives, so no file appears unexplained."""
    log.info("idempotency records in %s", mask_url(settings.store_url(settings.broker_url)))
    if scheme_of(settings.broker_url) == "memory":
        log.warning(
            "broker memory:// lives in this process: only what its own handlers publish reaches it; "
            "to feed it from `mailbag publish` use a shared broker (--broker amqp://... or MAILBAG_BROKER_URL)"
        )


def _exit_now() -> None:
    """After a second signal: exit at once, status 1, without closing anything more or
    waiting for the interpreter's teardown (threads, tasks). The broker takes back what
    the dropped connections held unsettled."""
    log.warning("exiting now (second signal)")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


async def _close(what: str, close: Callable[[], Awaitable[None]]) -> None:
    """Close within a bound: the process exits next, and a connection left open returns
    its unsettled messages as it drops."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await close()
    except Exception as exc:
        log.warning("closing the %s failed or took over %gs: %r; exiting anyway", what, CLOSE_TIMEOUT, exc)


async def supervise(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """`--processes N`: N copies of this worker under a `Supervisor`. The broker URL
    goes to them in the environment, so its password never shows in a process list."""
    argv = [sys.executable, "-m", "mailbag.cli", "worker", args.app]
    for flag, value in (
        ("--concurrency", args.concurrency),
        ("--prefetch", args.prefetch),
        ("--grace-period", args.grace_period),
        ("--metrics-host", args.metrics_host),
        ("--log-format", args.log_format),
        ("--idempotency-url", args.idempotency_url),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for queue in args.queue or ():
        argv += ["--queue", queue]
    argv += ["--summary-every", str(args.summary_every), *(["--verbose"] if args.verbose else [])]
    env = {**os.environ, "MAILBAG_BROKER_URL": settings.broker_url}
    return await Supervisor(argv, settings.processes, env=env, metrics_port=settings.metrics_port).run()


@contextmanager
def _serving(worker: Worker, metrics: Metrics, settings: WorkerSettings) -> Iterator[None]:
    """The worker's endpoints for the block; one line if the port is taken."""
    host, port = settings.metrics_host, settings.metrics_port or 0
    endpoints = Endpoints(metrics.registry, worker, host, port)
    try:
        endpoints.start()
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    try:
        yield
    finally:
        endpoints.stop()


#: default seconds between two summary lines
SUMMARY_EVERY = 10.0

#: how each settlement reads in the summary line, in its order
_SUMMARY: dict[Settlement, str] = {
    "handled": "handled",
    "retried": "retried",
    "dead_lettered": "dead-lettered",
    "postponed": "postponed",
}


class Tally:
    """What the worker settled, counted per kind as it happens (a dict increment per
    message: no formatting unless `verbose`), and summed up in one line at times."""

    def __init__(self, verbose: bool = False) -> None:
        self.counts: Counter[Settlement] = Counter()
        self.verbose = verbose
        self._said: Counter[Settlement] = Counter()

    def count(self, settlement: Settlement, delivery: Delivery) -> None:
        self.counts[settlement] += 1
        if self.verbose and settlement == "handled":
            message = delivery.message
            log.info(
                "handled",
                extra={
                    "message_id": message.id,
                    "correlation_id": message.correlation_id or message.id,
                    "queue": delivery.queue,
                    "attempt": delivery.attempt,
                },
            )

    def summary(self) -> str:
        """`handled N, retried N, dead-lettered N` (and postponed, when any were)."""
        shown = [k for k in _SUMMARY if k != "postponed" or self.counts[k]]
        return ", ".join(f"{_SUMMARY[k]} {self.counts[k]}" for k in shown)

    def say_if_changed(self) -> None:
        if self.counts != self._said:
            self._said = self.counts.copy()
            log.info(self.summary())

    @contextmanager
    def every(self, seconds: float) -> Iterator[None]:
        """Say the summary every `seconds` while the block runs, when it changed, and
        once more at the end."""
        task = asyncio.get_running_loop().create_task(self._repeat(seconds), name="tally")
        try:
            yield
        finally:
            task.cancel()
            self.say_if_changed()

    async def _repeat(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.say_if_changed()
