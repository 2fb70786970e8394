"""What every command shares: the `--broker` option, loading `MODULE:APP`, and turning
errors into one line on stderr with exit status 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import sysconfig
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

from mailbag.broker.errors import MailbagError
from mailbag.broker.url import mask_url, scheme_of

if TYPE_CHECKING:
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
    """Import `MODULE:ATTRIBUTE` and check it is an App (the current directory is importable).
    A module that fails to import, whatever it raises, is one line naming the error and
    the line of the user's code it came from."""
    from mailbag.workers import App

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"app must be given as MODULE:APP, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import module {module_name!r}: {exc}{_where_in_user_code(exc)}") from None
    except Exception as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else exc
        raise CliError(
            f"importing module {module_name!r} failed: {type(exc).__name__}: {detail}{_where_in_user_code(exc)}"
        ) from None
    try:
        app: Any = getattr(module, attr)
    except AttributeError:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(app) and not isinstance(app, App):
        app = app()
    if not isinstance(app, App):
        raise CliError(f"{spec} is a {type(app).__name__}, not a mailbag App")
    return app


def _where_in_user_code(exc: BaseException) -> str:
    """`(at FILE:LINE)` for the line of the user's code nearest the error: the innermost
    traceback frame outside the standard library, installed packages and mailbag (the
    file and line of a syntax error); "" when there is none."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_code(f.filename)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _is_user_code(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return False
    return not os.path.realpath(filename).startswith(_installed_folders())


def _installed_folders() -> tuple[str, ...]:
    """The folders of the standard library, of installed packages and of mailbag's own
    packages (wherever they are installed from)."""
    folders = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    for name, module in list(sys.modules.items()):
        if name == "mailbag" or name.startswith("mailbag."):
            folders.update(getattr(module, "__path__", ()))
    return tuple(os.path.join(os.path.realpath(folder), "") for folder in folders)


def add_follow_symlinks(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="when the output file is a symbolic link, write to its target (refused otherwise)",
    )


def write_output(path: str | None, text: str, *, follow_symlinks: bool = False) -> bool:
    """`text` to standard output (`path` None or -), else whole to the regular file at
    `path` (see `mailbag.broker.files`). True when a file was written."""
    if path is None or path == "-":
        sys.stdout.write(text)
        return False
    from mailbag.broker.files import write_file

    write_file(path, text, follow_symlinks=follow_symlinks)
    return True


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value
