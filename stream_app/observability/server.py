"""HTTP endpoint of one process: `/metrics`, `/healthz` and `/readyz`.

- `/metrics`: the process's own registry (prometheus_client's WSGI app, so
  content negotiation, gzip and OpenMetrics work as Prometheus expects);
- `/healthz`: 200 while the process can answer at all (liveness: restart me if
  this fails);
- `/readyz`: 200 only when the component says it is ready, else 503 with a
  short reason (readiness: the scorer still loading its table is alive but not
  ready, and must not be restarted for it).

The server runs in daemon threads so a hung scrape never blocks the Kafka loop,
and binds to 127.0.0.1 unless told otherwise (metrics are not for the internet).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIEnvironment

from prometheus_client import CollectorRegistry, make_wsgi_app

from stream_app.config import ConfigError

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]


def always_ready() -> tuple[bool, str]:
    """Readiness of a component that has no start-up phase."""
    return True, "ok"


MAX_CONNECTIONS = 256
"""Connections served at once; more are closed at once (a scraper and probes need few)."""


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: a slow scraper cannot block a health probe. Threads are
    capped (`MAX_CONNECTIONS`) and idle connections time out (`_QuietHandler`), or
    anyone who reaches the port could pile them up."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics_http connection from %s ended", client_address, exc_info=True)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _ThreadingWSGIServer6(_ThreadingWSGIServer):
    """The same on an IPv6 address ("::" listens on both families on Linux)."""

    address_family = socket.AF_INET6


REQUEST_DEADLINE_S = 5.0
"""Time a connection has to send its request line and headers, however it trickles them."""


class _QuietHandler(WSGIRequestHandler):
    """Access lines go to our logger at DEBUG, not to stderr on every scrape.

    A connection that has not sent its whole request head within REQUEST_DEADLINE_S is
    closed: the idle timeout counts per read, so clients sending a byte every few seconds
    held every slot and /healthz failed for as long as they kept on (security review).
    """

    timeout = 10.0  # seconds a connection may sit idle

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(REQUEST_DEADLINE_S, self._cut)
        self._deadline.daemon = True
        self._deadline.start()

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed

    def parse_request(self) -> bool:
        ok = super().parse_request()  # reads the headers
        self._deadline.cancel()
        return ok

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("metrics_http %s", format % args)


def _text(start_response: StartResponse, status: str, body: str) -> Iterable[bytes]:
    data = (body + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


class MetricsServer:
    """Serves one registry plus health endpoints; `start()` returns the bound port.

    `port=0` picks a free port (tests, several processes on one host).

    >>> from prometheus_client import CollectorRegistry
    >>> with MetricsServer(CollectorRegistry(), port=0) as server:
    ...     server.port > 0
    True
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0,
                 ready: ReadyCheck = always_ready) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be in 0..65535, got {port}")
        if not host.strip():  # "" would bind every interface
            raise ConfigError("the metrics host is empty; give an address (127.0.0.1 by "
                              "default, 0.0.0.0 for every interface)")
        self._metrics_app = make_wsgi_app(registry)
        self._host = host
        self._requested_port = port
        self._ready = ready
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (only valid after `start()`)."""
        if self._server is None:
            raise RuntimeError("MetricsServer.port read before start()")
        return int(self._server.server_address[1])

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            ok, reason = self._ready()
            status = "200 OK" if ok else "503 Service Unavailable"
            return _text(start_response, status, reason or ("ready" if ok else "not ready"))
        if path in ("/metrics", "/"):
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz")

    def start(self) -> int:
        """Bind and serve in a daemon thread; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        server_class: type[_ThreadingWSGIServer] = _ThreadingWSGIServer
        if ":" in self._host:  # an IPv6 literal such as "::"
            server_class = _ThreadingWSGIServer6
        try:
            self._server = make_server(self._host, self._requested_port, self._app,
                                       server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:  # the port taken, an address not on this host
            raise ConfigError(f"cannot serve metrics on {self._host}:{self._requested_port}: "
                              f"{exc.strerror or exc}; choose another --metrics-port "
                              "(0 = any free one) or --metrics-host") from exc
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics_http listening host=%s port=%d", self._host, self.port)
        return self.port

    def close(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
