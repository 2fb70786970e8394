"""The worker's HTTP endpoints on one port, for Prometheus and for ECS / Kubernetes
probes: `/metrics` (the worker's registry), `/healthz` (200 unless only a restart
helps: the worker's event loop is stuck) and `/readyz` (200 while the worker does all
its work, else 503 saying why; see `mailbag.workers.runtime`).

Served from a thread by the standard library's WSGI server, so a slow scrape never
holds up the event loop, nor a busy loop a liveness probe."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger("mailbag.worker")


class Probed(Protocol):
    """What the probes ask (a `Worker` has it); asked from the server's thread."""

    @property
    def alive(self) -> bool: ...

    def unready(self) -> str: ...


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes hit every few seconds: no access log line for each."""


class Endpoints:
    """Serves `registry` and the probes on `host`:`port` (port 0: any free one, see
    `port` once started) until `stop()`. `probed` is asked at each probe request."""

    def __init__(self, registry: CollectorRegistry, probed: Probed, host: str = "0.0.0.0", port: int = 9100):
        self.host = host
        self.port = port
        self._probed = probed
        self._metrics = make_wsgi_app(registry)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; raises OSError when the port is taken."""
        self._server = make_server(self.host, self.port, self._app, _Server, _QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="endpoints", daemon=True)
        self._thread.start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and release the port (returns within the 0.1 s poll)."""
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> Endpoints:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            if self._probed.alive:
                return _text(start_response, "200 OK", "alive")
            return _text(start_response, "503 Service Unavailable", "not alive: the event loop is stuck")
        if path == "/readyz":
            why = self._probed.unready()
            if why:
                return _text(start_response, "503 Service Unavailable", f"not ready: {why}")
            return _text(start_response, "200 OK", "ready")
        return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz")


def _text(start_response: Callable[..., Any], status: str, body: str) -> list[bytes]:
    data = f"{body}\n".encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
