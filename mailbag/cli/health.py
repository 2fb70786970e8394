"""`mailbag health`: ask a running worker whether it is alive (`--probe liveness`, its
/healthz) or ready (`--probe readiness`, the default, its /readyz); exit 0 when it is,
1 when not (or unreachable), with one line saying which.

A container HEALTHCHECK is a liveness check: an orchestrator that acts on it replaces
the container, and /readyz is 503 while the broker is down, which the worker rides out
by reconnecting. So the image checks liveness, and readiness is for load balancers and
readiness probes, which only hold traffic back:

    HEALTHCHECK CMD mailbag health --probe liveness --port 9102
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

from mailbag.cli.common import CliError

#: probe -> (the endpoint it asks, what a 200 means)
PROBES = {"readiness": ("/readyz", "ready"), "liveness": ("/healthz", "alive")}
#: the probe asks the worker itself, never through an HTTP proxy from the environment
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--probe",
        choices=tuple(PROBES),
        default="readiness",
        help="readiness: /readyz, 503 while the broker is down or the worker cannot work; "
        "liveness: /healthz, 503 only while the event loop is stuck",
    )
    p.add_argument("--port", type=int, metavar="N", help="the worker's --metrics-port (default: $MAILBAG_METRICS_PORT)")
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="the worker's address (default 127.0.0.1)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for an answer (default 5)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    port = args.port if args.port is not None else os.environ.get("MAILBAG_METRICS_PORT")
    if port is None or not str(port).isdigit():
        raise CliError("give the worker's metrics port: --port N, or MAILBAG_METRICS_PORT")
    url = probe_url(args.host, int(port), args.probe)
    try:
        with _DIRECT.open(url, timeout=args.timeout) as response:
            print(f"{PROBES[args.probe][1]}: {url} answered {response.status}")
            return 0
    except urllib.error.HTTPError as exc:
        reason = f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        cause = getattr(exc, "reason", exc)
        reason = f"cannot reach {url}: {getattr(cause, 'strerror', None) or cause}"
    print(f"mailbag: not {PROBES[args.probe][1]}: {reason}", file=sys.stderr)
    return 1


def probe_url(host: str, port: int, probe: str) -> str:
    """The worker endpoint a probe asks."""
    return f"http://{host}:{port}{PROBES[probe][0]}"
