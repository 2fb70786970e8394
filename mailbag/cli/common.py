"""What every command shares: the `--broker` option, loading `MODULE:APP`, and turning
errors into one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from mailbag.broker.errors import MailbagError
from mailbag.broker.url import mask_url, scheme_of
from mailbag.workers import App

DEFAULT_BROKER = "memory://"

#: libraries whose log lines (connection retries, "Found credentials") would come
#: before, and bury, the command's own one-line outcome
LIBRARIES = ("aio_pika", "aiormq", "botocore", "boto3", "urllib3", "s3transfer")


class CliError(MailbagError):
    """A user mistake: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def report(exc: BaseException) -> int:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"mailbag: error: {mask_url(text)}", file=sys.stderr)
    return 2


@contextmanager
def libraries_quiet() -> Iterator[None]:
    """Third-party log lines stay out of a command's output (`quiet_libraries`); their
    levels are restored afterwards, for a program that runs commands in-process."""
    saved = {name: logging.getLogger(name).level for name in LIBRARIES}
    quiet_libraries()
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def quiet_libraries(level: int = logging.CRITICAL) -> None:
    """Keep third-party log lines below `level` out of the output: what they report
    reaches the user as mailbag's own error line."""
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(level)


def refuse_in_process(url: str, what: str) -> None:
    """A command that works on messages another process holds cannot use `memory://`:
    it would start an empty broker of its own and lose (or find nothing) silently."""
    if scheme_of(url) == "memory":
        raise CliError(
            f"no broker to {what}: memory:// lives inside one process and is gone when this command exits; "
            "pass --broker amqp://127.0.0.1/ (or sqs://?region=...), or set MAILBAG_BROKER_URL, for the worker too"
        )


def add_broker_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker",
        metavar="URL",
        default=os.environ.get("MAILBAG_BROKER_URL", DEFAULT_BROKER),
        help="broker URL: memory://, amqp://user:pass@host/vhost, sqs://?region=... "
        "(default: $MAILBAG_BROKER_URL, else memory://)",
    )


def load_app(spec: str) -> App:
    """Import `MODULE:ATTRIBUTE` and check it is an App (the current directory is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"app must be given as MODULE:APP, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import module {module_name!r}: {exc}") from None
    try:
        app: Any = getattr(module, attr)
    except AttributeError:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise CliError(f"{spec} is a {type(app).__name__}, not a mailbag App")
    return app
