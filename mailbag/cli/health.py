"""`mailbag health`: ask a running worker's /readyz; exit 0 when it is ready, 1 when
not (or unreachable), with one line saying which. For a container HEALTHCHECK:

    HEALTHCHECK CMD mailbag health --port 9100
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

from mailbag.cli.common import CliError

#: the probe asks the worker itself, never through an HTTP proxy from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def register(subs: argparse._SubParsersAction) -> None:
    p = subs.add_parser("health", help="exit 0 if the worker on --port is ready (its /readyz), else 1")
    p.add_argument("--port", type=int, metavar="N", help="the worker's --metrics-port (default: $MAILBAG_METRICS_PORT)")
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="the worker's address (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    port = args.port if args.port is not None else os.environ.get("MAILBAG_METRICS_PORT")
    if port is None or not str(port).isdigit():
        raise CliError("give the worker's metrics port: --port N, or MAILBAG_METRICS_PORT")
    url = f"http://{args.host}:{port}/readyz"
    try:
        with _DIRECT.open(url, timeout=args.timeout) as response:
            print(f"ready: {url} answered {response.status}")
            return 0
    except urllib.error.HTTPError as exc:
        reason = f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        reason = f"cannot reach {url}: {getattr(cause, 'strerror', None) or cause}"
    print(f"mailbag: not ready: {reason}", file=sys.stderr)
    return 1
