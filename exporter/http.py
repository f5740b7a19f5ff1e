"""The HTTP server: ``/metrics`` from pre-rendered bytes, plus probes and a landing page.

An asyncio protocol with httptools' HTTP/1.1 parser (the C parser uvicorn uses) instead of
``http.server``: a scrape is a dictionary lookup and one ``write`` of bytes rendered after the
last cycle, so it never waits for the database and costs close to what returning bytes costs.
Slow or idle clients are cut off by deadlines and the number of open connections is capped, so
nobody can hold the server (slowloris).
"""

from __future__ import annotations

import asyncio
import functools
import html
import logging
import math
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import httptools

from exporter import __version__
from exporter.snapshot import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Rendered,
)

log = logging.getLogger(__name__)


class Authenticator(Protocol):
    """Basic-auth verification (``WebConfig`` implements it)."""

    def check_cached(self, authorization: bytes | None) -> bool | None:
        """The verdict if it is cheap to tell (cache hit, malformed header), else None."""

    def authorize(self, authorization: bytes | None) -> bool:
        """The full (bcrypt) verdict; slow, so the server runs it in a thread."""


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
_WANTED_HEADERS = frozenset({b"accept", b"accept-encoding", b"authorization"})
MAX_HEADER_BYTES = 16 * 1024
RELOAD_PATH = b"/-/reload"


class SnapshotSource(Protocol):
    """What the server needs from the snapshot store (kept narrow so tests can fake it)."""

    @property
    def current(self) -> Rendered: ...

    @property
    def ready(self) -> bool: ...

    def stale_queries(self) -> list[str]: ...


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 10.0  # a request's headers must arrive within this
    idle_timeout: float = 75.0  # keep-alive connections idle longer are closed
    max_connections: int = 256


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    gzipped: bool = False
    extra: bytes = b""


UNAUTHORIZED = Response(
    401,
    b"Unauthorized\n",
    extra=b'WWW-Authenticate: Basic realm="tw-exporter", charset="UTF-8"\r\n',
)

LANDING_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tw-exporter</title></head>
<body><h1>tw-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for the platform's business metrics.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
""".encode()


def encode_headers(headers: tuple[tuple[str, str], ...]) -> bytes:
    """Extra response headers (from the web config) as the bytes every response carries."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


class MetricsServer:
    """Owns the listening sockets and the per-connection protocol instances."""

    def __init__(
        self,
        snapshot: SnapshotSource,
        *,
        authenticator: Authenticator | None = None,
        extra_headers: tuple[tuple[str, str], ...] = (),
        ssl_context: ssl.SSLContext | None = None,
        limits: ServerLimits | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.authenticator = authenticator
        self.extra_headers = encode_headers(extra_headers)
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        self.connections: set[_Connection] = set()
        # ``POST /-/reload`` (--web-enable-lifecycle): re-reads the configuration; True = ok.
        self.reload: Callable[[], bool] | None = None
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def _sweep_expired(self) -> None:
        """Close connections past their deadline.

        One periodic sweep instead of a ``call_later`` timer per request: arming and
        cancelling two timers per scrape cost about half the CPU of serving it (measured by
        ``benchmarks/http_hotpath.py``); a deadline is one float assignment.
        """
        limits = self.limits
        period = max(0.05, min(1.0, limits.header_timeout / 3, limits.idle_timeout / 3))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for connection in [c for c in self.connections if c.deadline < now]:
                connection.expire()

    async def start(self, host: str, port: int) -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep_expired())
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host=host or None,
            port=port,
            ssl=self.ssl_context,
            reuse_address=True,
            backlog=1024,
        )
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------ routing

    def allows(self, method: bytes, path: bytes) -> bool:
        return method in (b"GET", b"HEAD") or (
            method == b"POST" and path == RELOAD_PATH and self.reload is not None
        )

    def respond(
        self, path: bytes, headers: dict[bytes, bytes], method: bytes = b"GET"
    ) -> Response | Awaitable[Response]:
        """The response, or an awaitable of it when credentials need a bcrypt check."""
        if path in (b"/healthz", b"/readyz"):
            # Probes stay reachable without credentials (kubelet has none) and say nothing
            # secret.
            return self._probe(path)
        if self.authenticator is not None:
            authorization = headers.get(b"authorization")
            verdict = self.authenticator.check_cached(authorization)
            if verdict is None:
                return self._respond_after_bcrypt(path, headers, authorization, method)
            if not verdict:
                return UNAUTHORIZED
        return self._route(path, headers, method)

    async def _respond_after_bcrypt(
        self,
        path: bytes,
        headers: dict[bytes, bytes],
        authorization: bytes | None,
        method: bytes = b"GET",
    ) -> Response:
        # bcrypt takes ~100 ms of CPU: in a thread, so a flood of wrong passwords cannot
        # stall the event loop and everybody else's scrapes.
        assert self.authenticator is not None
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self.authenticator.authorize, authorization):
            return self._route(path, headers, method)
        return UNAUTHORIZED

    def _route(self, path: bytes, headers: dict[bytes, bytes], method: bytes = b"GET") -> Response:
        if path == RELOAD_PATH and self.reload is not None:
            if method != b"POST":
                return Response(405, b"Method Not Allowed\n", extra=b"Allow: POST\r\n")
            if self.reload():
                return Response(200, b"reloaded\n")
            return Response(500, b"reload failed: the old configuration keeps running\n")
        if path == b"/metrics":
            return self._metrics(headers)
        if path == b"/":
            return Response(200, LANDING_PAGE, content_type=b"text/html; charset=utf-8")
        return Response(404, b"Not Found\n")

    def _probe(self, path: bytes) -> Response:
        if path == b"/healthz":
            return Response(200, b"ok\n")
        if self.snapshot.ready:
            return Response(200, b"ready\n")
        stale = ", ".join(self.snapshot.stale_queries())
        return Response(503, f"not ready: no fresh data for {stale}\n".encode())

    def _metrics(self, headers: dict[bytes, bytes]) -> Response:
        rendered = self.snapshot.current
        if b"application/openmetrics-text" in headers.get(b"accept", b""):
            encoded, content_type = rendered.openmetrics, OPENMETRICS_CONTENT_TYPE
        else:
            encoded, content_type = rendered.text, TEXT_CONTENT_TYPE
        if b"gzip" in headers.get(b"accept-encoding", b""):
            return Response(200, encoded.gzipped, content_type.encode(), gzipped=True)
        return Response(200, encoded.body, content_type.encode())


class _Connection(asyncio.Protocol):
    """One client connection: parses requests with httptools and answers them in order."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.loop = asyncio.get_running_loop()
        self.deadline = math.inf  # loop time by which the client must have sent more
        self.in_request = False
        # Requests parsed but not answered yet; answered strictly in order (pipelining), and
        # reading pauses while one waits for a bcrypt check.
        self.pending: deque[tuple[bytes, bytes, dict[bytes, bytes], bool]] = deque()
        self.waiting = False

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.server.connections) >= self.server.limits.max_connections:
            self._send(Response(503, b"Too many connections\n"), keep_alive=False)
            return
        self.server.connections.add(self)
        self._arm(self.server.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send(Response(400, b"Upgrade not supported\n"), keep_alive=False)
        except httptools.HttpParserError:
            self._send(Response(400, b"Bad Request\n"), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._disarm()
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.in_request = True
        self.url = b""
        self.headers = {}
        self.header_bytes = 0
        self._arm(self.server.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        key = name.lower()
        if key in _WANTED_HEADERS:
            self.headers[key] = value

    def on_headers_complete(self) -> None:
        self._disarm()

    def on_message_complete(self) -> None:
        self.in_request = False
        path = self.url.split(b"?", 1)[0]
        method = self.parser.get_method()
        self.pending.append((method, path, self.headers, self.parser.should_keep_alive()))
        if not self.waiting:
            self._answer_pending()

    def _answer_pending(self) -> None:
        while self.pending and not self.waiting:
            if self.transport is None or self.transport.is_closing():
                self.pending.clear()
                return
            method, path, headers, keep_alive = self.pending.popleft()
            if not self.server.allows(method, path):
                response: Response | Awaitable[Response] = Response(
                    405, b"Method Not Allowed\n", extra=b"Allow: GET, HEAD\r\n"
                )
            else:
                response = self.server.respond(path, headers, method)
            if isinstance(response, Response):
                self._finish(response, keep_alive, method == b"HEAD")
                continue
            self.waiting = True
            assert self.transport is not None
            self.transport.pause_reading()
            task = asyncio.ensure_future(response)
            task.add_done_callback(functools.partial(self._resume, keep_alive, method == b"HEAD"))

    def _resume(self, keep_alive: bool, head: bool, done: asyncio.Future[Response]) -> None:
        self.waiting = False
        if self.transport is None or self.transport.is_closing():
            return
        if done.cancelled() or done.exception() is not None:
            self._send(Response(503, b"Service Unavailable\n"), keep_alive=False)
            return
        self._finish(done.result(), keep_alive, head)
        if not self.transport.is_closing():
            self.transport.resume_reading()
            self._answer_pending()

    def _finish(self, response: Response, keep_alive: bool, head: bool) -> None:
        self._send(response, keep_alive=keep_alive, head=head)
        if keep_alive and not self.pending:
            self._arm(self.server.limits.idle_timeout)

    # ------------------------------------------------------------ helpers

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            self._send(Response(431, b"Request headers too large\n"), keep_alive=False)
            raise httptools.HttpParserError("headers too large")

    def _send(self, response: Response, *, keep_alive: bool, head: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head_lines = [
            b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"")),
            b"Content-Type: " + response.content_type + b"\r\n",
            b"Content-Length: %d\r\n" % len(response.body),
            response.extra,
            self.server.extra_headers,
        ]
        if response.gzipped:
            head_lines.append(b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")
        if not keep_alive:
            head_lines.append(b"Connection: close\r\n")
        head_lines.append(b"\r\n")
        transport.write(b"".join(head_lines) if head else b"".join(head_lines) + response.body)
        if not keep_alive:
            self._disarm()
            transport.close()

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def expire(self) -> None:
        """Called by the server's sweep once the deadline has passed."""
        self.deadline = math.inf
        if self.transport is not None and not self.transport.is_closing():
            if self.in_request:
                self._send(Response(408, b"Request Timeout\n"), keep_alive=False)
            else:
                self.transport.close()
