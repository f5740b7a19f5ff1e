"""The HTTP server: ``/metrics`` from pre-rendered bytes, plus probes and a landing page.

An asyncio protocol with httptools' HTTP/1.1 parser (the C parser uvicorn uses) instead of
``http.server``: a scrape is a dictionary lookup and one ``write`` of bytes rendered after the
last cycle, so it never waits for the database and costs close to what returning bytes costs.

Hostile clients are bounded (docs/http-limits.md states each limit and what a client sees):
deadlines for the TLS handshake, the headers, idle keep-alive and unread responses, swept
once per period; a connection cap that evicts the connection which has made the least
progress for the longest instead of refusing a newcomer, so probes and scrapes always get in;
header bytes and lines counted; no request bodies; reading paused while responses wait
unread or a password check runs; a cap on pipelined requests; bcrypt on its own bounded
executor (``WebConfig.submit``), with a cap on failed checks per connection. A connection
holds no buffer and no parser before its first bytes, and is freed by reference counting
when it closes (issue #21); accepting and the TLS upgrade live in ``accepting`` and ``tls``.

A scrape costs little Python: the response's bytes are built once per snapshot and format
(``MetricsServer.wire``), and a request whose bytes were seen before is not parsed again
(``_Connection.data_received``); see docs/performance.md for the comparison with nginx.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import html
import logging
import math
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NoReturn, Protocol

import httptools

from exporter import __version__
from exporter.expose.accepting import (
    BASE_DESCRIPTORS,
    Acceptor,
    LoopErrorLog,
    bind,
    fit_connection_cap,
)
from exporter.expose.negotiation import Negotiated, negotiate
from exporter.expose.snapshot import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    TEXT_CONTENT_TYPE_V1,
    Rendered,
)
from exporter.expose.tls import TLS_READ_BUFFER_BYTES, drop_tracebacks, start_tls

log = logging.getLogger(__name__)


class Authenticator(Protocol):
    """Basic-auth verification (``WebConfig`` implements it)."""

    def check_cached(self, authorization: bytes | None) -> bool | None:
        """The verdict if it is cheap to tell (cache hit, malformed header), else None."""

    def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool] | None:
        """Queue the full (bcrypt) check on the authenticator's own bounded executor; None when
        its queue is full (the server answers 503 with Retry-After at once)."""


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
# Headers the server reads; the last two only to refuse a request body.
_WANTED_HEADERS = frozenset(
    {b"accept", b"accept-encoding", b"authorization", b"content-length", b"transfer-encoding"}
)
# Headers whose repetition would make "which one counts" ambiguous: 400 rather than guess.
_SINGLE_HEADERS = frozenset({b"accept-encoding", b"authorization"})

# Request line plus header lines, counted on the wire (see ``_Connection.data_received``).
MAX_HEADER_BYTES = 16 * 1024
# Every read lands in one of the server's two shared buffers (plaintext: ``_Connection.get_buffer``;
# TLS ciphertext: ``exporter.expose.tls.TLSProtocol``) instead of asyncio allocating a fresh 256 KiB
# bytes object for every socket read and TLS record (issue #11), or a buffer per connection
# (issue #21: 16 KiB per connection, plus asyncio's 256 KiB per TLS connection, allocated before
# a client had sent a byte). Sharing is safe because a read is parsed before the next one
# starts: asyncio calls ``get_buffer``, reads, then ``buffer_updated`` without yielding, and the
# parser copies what it keeps. A request's headers fit (see MAX_HEADER_BYTES), and so does the
# largest TLS record; anything longer simply arrives in more reads.
READ_BUFFER_BYTES = 16 * 1024
RELOAD_PATH = b"/-/reload"
MAX_HEADER_LINES = 100
# The fewest wire bytes a request line adds beyond its URL ("GET " + " HTTP/1.1" + CRLF, plus
# the blank line ending the headers), and a header line beyond its name and value (":" + CRLF).
_REQUEST_LINE_BYTES = 17
_HEADER_LINE_BYTES = 3
# Requests parsed but not yet answered on one connection (they queue only while the client does
# not read its responses or a password check runs); one more gets 503 and the connection closes.
MAX_PIPELINED = 32
# Requests remembered by their bytes (``_Connection.data_received``): a scraper sends the same
# bytes for every scrape, so its request is parsed once, not once per scrape.
PARSED_CACHE_SIZE = 32
MAX_REMEMBERED_REQUEST = 2048
# Failed bcrypt checks on one connection; the last one's 401 closes the connection, so a
# password guesser must reconnect (and, with TLS, handshake) for every few guesses.
MAX_AUTH_FAILURES = 3


class ReloadOutcome(Protocol):
    """What a reload answers (``exporter.collect.reload.Outcome``)."""

    @property
    def ok(self) -> bool: ...
    @property
    def line(self) -> str: ...


class SnapshotSource(Protocol):
    """What the server needs from the snapshot store (kept narrow so tests can fake it)."""

    @property
    def current(self) -> Rendered: ...

    @property
    def ready(self) -> bool: ...

    def stale_queries(self) -> list[str]: ...


@dataclass(frozen=True)
class ServerLimits:
    # The TLS handshake and the first request byte, then each request's headers from its first
    # byte, must arrive within this; it is also how long a response may sit unread before the
    # connection is dropped, and how long a closing connection may take to flush.
    header_timeout: float = 10.0
    idle_timeout: float = 75.0  # keep-alive connections idle longer are closed
    max_connections: int = 256  # TLS handshakes included; full -> evict, never refuse
    # Descriptors the rest of the process may hold (database pool, HA lock connection); the
    # connection cap is lowered at start so that both fit under RLIMIT_NOFILE.
    reserved_descriptors: int = 0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    gzipped: bool = False
    extra: bytes = b""
    # The bytes on the wire, per (keep-alive, HEAD, the server's extra headers): built once
    # per response object (``MetricsServer.wire``). /metrics responses are kept per snapshot
    # (``MetricsServer._metrics``), so a scrape writes bytes built before it arrived.
    wire: dict[tuple[bool, bool, bytes], bytes] = field(
        default_factory=dict, compare=False, repr=False
    )


UNAUTHORIZED = Response(
    401,
    b"Unauthorized\n",
    extra=b'WWW-Authenticate: Basic realm="tw-exporter", charset="UTF-8"\r\n',
)
AUTH_BUSY = Response(503, b"Too many password checks in progress\n", extra=b"Retry-After: 1\r\n")
AUTH_FAILED = Response(503, b"Service Unavailable\n")
BAD_REQUEST = Response(400, b"Bad Request\n")
EVICTED = Response(503, b"Too many connections\n", extra=b"Retry-After: 1\r\n")
HAS_BODY = Response(413, b"Request bodies are not accepted\n")
DUPLICATE_HEADER = Response(400, b"Repeated Authorization or Accept-Encoding header\n")
HEADERS_TOO_LARGE = Response(431, b"Request headers too large\n")
TOO_MANY_PIPELINED = Response(503, b"Too many pipelined requests\n")
METHOD_NOT_ALLOWED = Response(405, b"Method Not Allowed\n", extra=b"Allow: GET, HEAD\r\n")
NOT_FOUND = Response(404, b"Not Found\n")
HEALTHY = Response(200, b"ok\n")
READY = Response(200, b"ready\n")
REQUEST_TIMEOUT = Response(408, b"Request Timeout\n")
POST_ONLY = Response(405, b"Method Not Allowed\n", extra=b"Allow: POST\r\n")

LANDING_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tw-exporter</title></head>
<body><h1>tw-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for the platform's business metrics.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
""".encode()

LANDING = Response(200, LANDING_PAGE, content_type=b"text/html; charset=utf-8")

_NEGOTIATED_CACHE_SIZE = 64
_PLAIN = Negotiated(openmetrics=False, text_v1=False, gzip=False)


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
        self._authenticator = authenticator
        self.extra_headers = encode_headers(extra_headers)
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        # The cap in force: --web-max-connections, lowered at start to fit the open-files limit.
        self.max_connections = self.limits.max_connections
        self.descriptor_limit: int | None = None
        # Every open connection, TLS handshakes included: what the cap counts and the sweep
        # visits.
        self.connections: set[_Connection] = set()
        # ``POST /-/reload`` (--web-enable-lifecycle): re-reads the configuration, off the event
        # loop, and answers whether it applied and the one line that says why (Reloader.reload).
        self.reload: Callable[[], Awaitable[ReloadOutcome]] | None = None
        # Handshakes, password checks and accepted sockets being wrapped in transports:
        # referenced here so none is garbage collected half-way, and cancelled on close.
        self.tasks: set[asyncio.Task[Any]] = set()
        self.evictions = 0
        self.acceptor = Acceptor(self._serve_socket, self.max_connections)
        self.read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self.tls_read_buffer = memoryview(bytearray(TLS_READ_BUFFER_BYTES))
        self._negotiated: dict[tuple[bytes | None, bytes | None], Negotiated] = {}
        # Requests seen whole in one read, by their bytes: (method, path, headers) of a
        # keep-alive GET or HEAD, which is all answering it needs (see data_received).
        self.parsed: dict[bytes, tuple[bytes, bytes, dict[bytes, bytes]]] = {}
        # /metrics responses of the snapshot last served, one per negotiated format.
        self._metrics_of: Rendered | None = None
        self._metrics_responses: dict[Negotiated, Response] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def authenticator(self) -> Authenticator | None:
        return self._authenticator

    @authenticator.setter
    def authenticator(self, new: Authenticator | None) -> None:
        """A reload's new authenticator takes over the old one's verified logins for users
        whose hash did not change (``WebConfig.adopt_cache``): a reload must not send every
        scraper back to bcrypt, behind a flood of wrong passwords (issue #21)."""
        old = self._authenticator
        adopt = getattr(new, "adopt_cache", None)
        if old is not None and new is not old and adopt is not None:
            adopt(old)
        self._authenticator = new

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
        """Bind and start accepting; returns the bound addresses.

        The server accepts connections itself rather than through ``loop.create_server``: to
        accept in small batches, to stop accepting while its sockets are at their budget, and
        to pause after EMFILE/ENFILE (``exporter.expose.accepting``). Each connection is plain
        TCP even with TLS: it upgrades itself (``exporter.expose.tls``) so that a handshake
        counts toward the cap and is bounded by the header deadline."""
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(LoopErrorLog())
        self.max_connections, self.descriptor_limit = fit_connection_cap(
            self.limits.max_connections, self.limits.reserved_descriptors
        )
        self.acceptor = Acceptor(self._serve_socket, self.max_connections)
        self._log_cap()
        listeners = await bind(loop, host, port)
        self._sweeper = loop.create_task(self._sweep_expired())
        self.acceptor.start(listeners)
        return [sock.getsockname()[:2] for sock in listeners]

    def _log_cap(self) -> None:
        """A warning when the cap had to be lowered to fit the open-files limit."""
        configured, limit = self.limits.max_connections, self.descriptor_limit
        if self.max_connections < configured:
            log.warning(
                "at most %d HTTP connections, not %d (--web-max-connections): the open-files "
                "limit (RLIMIT_NOFILE) is %s and %d descriptors are kept for the database "
                "connections, listening sockets and files; raise it (ulimit -n, or the "
                "container runtime's nofile limit) to allow more",
                self.max_connections,
                configured,
                limit,
                BASE_DESCRIPTORS + self.limits.reserved_descriptors,
            )
        # Otherwise the cap is in the "listening on" line (exporter.app).

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.acceptor.close()
        for connection in list(self.connections):
            connection.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.limits.header_timeout)
        await asyncio.sleep(0)  # let the transports closed above run their connection_lost

    # ------------------------------------------------------------ accepting

    def _serve_socket(self, sock: socket.socket) -> None:
        self.spawn(self._connect(sock))

    async def _connect(self, sock: socket.socket) -> None:
        """Wrap an accepted socket in asyncio's transport and a ``_Connection``."""
        created: list[_Connection] = []

        def factory() -> _Connection:
            created.append(_Connection(self))
            return created[0]

        try:
            await asyncio.get_running_loop().connect_accepted_socket(factory, sock)
        except BaseException as error:
            sock.close()
            if created:
                created[0].release_socket()
            else:
                self.acceptor.socket_closed()
            if isinstance(error, asyncio.CancelledError):
                raise
            log.debug("could not set up an accepted connection: %r", error)

    def admit(self, connection: _Connection) -> None:
        """Count a new connection; when the cap is reached, first evict the connection that has
        made the least progress for the longest (idle keep-alive, trickled headers, a stalled
        handshake or unread responses): refusing newcomers would let whoever holds the slots
        deny every scrape and probe."""
        if len(self.connections) >= self.max_connections:
            victim = min(self.connections, key=attrgetter("progress_at"))
            self.evictions += 1
            victim.evict()
        self.connections.add(connection)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # ------------------------------------------------------------ routing

    def allows(self, method: bytes, path: bytes) -> bool:
        """GET and HEAD everywhere; POST only on the reload endpoint, and only when
        --web-enable-lifecycle wired a reload callback (it takes no body: 413 as anywhere)."""
        return method in (b"GET", b"HEAD") or (
            method == b"POST" and path == RELOAD_PATH and self.reload is not None
        )

    def respond(
        self, path: bytes, headers: dict[bytes, bytes], method: bytes = b"GET"
    ) -> Response | Coroutine[Any, Any, Response]:
        """The response, or a coroutine for it when credentials need a bcrypt check."""
        if path in (b"/healthz", b"/readyz"):
            # Probes stay reachable without credentials (kubelet has none) and say nothing
            # secret.
            return self._probe(path)
        if self.authenticator is not None:
            authorization = headers.get(b"authorization")
            try:
                verdict = self.authenticator.check_cached(authorization)
                if verdict is None:
                    future = self.authenticator.submit(authorization)
                    if future is None:
                        return AUTH_BUSY
                    return self._respond_after_bcrypt(path, headers, future, method)
            except Exception:
                log.exception("the basic-auth check failed; answering 503")
                return AUTH_FAILED
            if not verdict:
                return UNAUTHORIZED
        return self._route(path, headers, method)

    async def _respond_after_bcrypt(
        self,
        path: bytes,
        headers: dict[bytes, bytes],
        check: concurrent.futures.Future[bool],
        method: bytes = b"GET",
    ) -> Response:
        # bcrypt takes ~100 ms of CPU: on the authenticator's own thread, so a flood of wrong
        # passwords can neither stall the event loop nor queue ahead of the database's host
        # name lookups in asyncio's default executor.
        if await asyncio.wrap_future(check):
            routed = self._route(path, headers, method)
            return routed if isinstance(routed, Response) else await routed
        return UNAUTHORIZED

    def _route(
        self, path: bytes, headers: dict[bytes, bytes], method: bytes = b"GET"
    ) -> Response | Coroutine[Any, Any, Response]:
        if path == RELOAD_PATH and self.reload is not None:
            if method != b"POST":
                return POST_ONLY
            return self._reload(self.reload)
        if path == b"/metrics":
            return self._metrics(headers)
        if path == b"/":
            return LANDING
        return NOT_FOUND

    @staticmethod
    async def _reload(reload: Callable[[], Awaitable[ReloadOutcome]]) -> Response:
        """``POST /-/reload``: 200, or 500 with the one line that says why nothing changed."""
        outcome = await reload()
        if outcome.ok:
            return Response(200, f"{outcome.line}\n".encode())
        return Response(
            500, f"reload failed, the running configuration is kept: {outcome.line}\n".encode()
        )

    def _probe(self, path: bytes) -> Response:
        if path == b"/healthz":
            return HEALTHY
        if self.snapshot.ready:
            return READY
        stale = ", ".join(self.snapshot.stale_queries())
        return Response(503, f"not ready: no fresh data for {stale}\n".encode())

    def _negotiate(self, headers: dict[bytes, bytes]) -> Negotiated:
        accept, encoding = headers.get(b"accept"), headers.get(b"accept-encoding")
        if accept is None and encoding is None:
            return _PLAIN
        key = (accept, encoding)
        found = self._negotiated.get(key)
        if found is None:
            found = negotiate(accept, encoding)
            if len(self._negotiated) >= _NEGOTIATED_CACHE_SIZE:
                self._negotiated.clear()  # bounded: hostile clients can vary the headers
            self._negotiated[key] = found
        return found

    def _metrics(self, headers: dict[bytes, bytes]) -> Response:
        rendered = self.snapshot.current
        choice = self._negotiate(headers)
        if rendered is not self._metrics_of:
            self._metrics_of, self._metrics_responses = rendered, {}
        found = self._metrics_responses.get(choice)
        if found is None:
            found = self._metrics_responses[choice] = self._metrics_response(rendered, choice)
        return found

    @staticmethod
    def _metrics_response(rendered: Rendered, choice: Negotiated) -> Response:
        if choice.openmetrics:
            encoded, content_type = rendered.openmetrics, OPENMETRICS_CONTENT_TYPE
        else:
            encoded = rendered.text
            content_type = TEXT_CONTENT_TYPE_V1 if choice.text_v1 else TEXT_CONTENT_TYPE
        if choice.gzip:
            return Response(200, encoded.gzipped, content_type.encode(), gzipped=True)
        return Response(200, encoded.body, content_type.encode())

    def wire(self, response: Response, keep_alive: bool, head: bool = False) -> bytes:
        """``response`` as written: status line, headers and (unless ``head``) the body.

        Built once per response object and kept on it: a /metrics response is reused for
        every scrape of a snapshot, so a scrape no longer formats the head and copies the
        body into a new bytes object of the body's size (a 22 kB allocation and copy per
        scrape, issue #21)."""
        key = (keep_alive, head, self.extra_headers)
        found = response.wire.get(key)
        if found is None:
            found = _encode(response, keep_alive, head, self.extra_headers)
            if len(response.wire) >= 8:  # bounded: the extra headers change only at reloads
                response.wire.clear()
            response.wire[key] = found
        return found


def _encode(response: Response, keep_alive: bool, head: bool, extra_headers: bytes) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"")),
        b"Content-Type: " + response.content_type + b"\r\n",
        b"Content-Length: %d\r\n" % len(response.body),
        response.extra,
        extra_headers,
    ]
    if response.gzipped:
        lines.append(b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(response.body)
    return b"".join(lines)


class _Stop(Exception):
    """Raised from a parser callback: parse nothing more on this connection. httptools
    re-raises it as ``HttpParserCallbackError``, so the reason travels in ``stop_reason``."""


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parses requests with httptools and answers them in order.

    A buffered protocol: asyncio reads into the server's shared ``read_buffer`` (``recv_into``
    for TCP, ``SSLObject.read`` into it for TLS) and ``buffer_updated`` parses what arrived, so
    a read allocates nothing large and an idle connection holds no buffer (READ_BUFFER_BYTES).

    Reading is paused while a password check runs, while the transport's write buffer is
    above its high-water mark (the client is not reading) and once parsing has stopped; after
    a stop the pending answers go out, then ``final`` (if any), then the connection closes.
    """

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        # Created with the first bytes (most hostile connections never send any) and dropped
        # with the connection: it holds this protocol's bound methods, a reference cycle that
        # only the garbage collector would otherwise free (issue #21: ~3,500 connections of a
        # churning client alive at once).
        self.parser: httptools.HttpRequestParser | None = None
        self.socket_held = True  # counted in ``server.open_sockets`` until released
        self.transport: asyncio.Transport | None = None
        self.raw: asyncio.Transport | None = None  # the TCP transport while TLS handshakes
        self.early: list[bytes] | None = None  # plaintext delivered before start_tls returned
        self.loop = asyncio.get_running_loop()
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.header_bytes = 0
        self.header_lines = 0
        self.rejection: Response | None = None  # set by a header; answered at headers_complete
        self.deadline = math.inf  # loop time by which the client must have sent (or read) more
        self.progress_at = self.loop.time()  # accepted, or last response written: eviction key
        self.in_request = False
        self.in_headers = False
        self.begun = 0  # requests started on this connection
        self.carried = False  # the current request's headers continue from an earlier read
        # Requests parsed but not answered yet; answered strictly in order (pipelining).
        self.pending: deque[tuple[bytes, bytes, dict[bytes, bytes], bool]] = deque()
        self.waiting = False  # a password check is running for the head of the queue
        self.write_paused = False
        self.stopped = False
        self.closing = False  # the last response is written; only draining input remains
        self.final: Response | None = None
        self.stop_reason: Response | None = None  # why a callback raised _Stop
        self.auth_failures = 0
        # The last request parsed: (method, path, headers, keep-alive), for ``_remember``.
        self.last: tuple[bytes, bytes, dict[bytes, bytes], bool] | None = None

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        server = self.server
        server.admit(self)
        self.progress_at = now = self.loop.time()
        self.deadline = now + server.limits.header_timeout
        if server.ssl_context is None:
            self.transport = transport
        else:
            self.raw, self.early = transport, []
            server.spawn(self._handshake(transport, server.ssl_context))

    async def _handshake(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        timeout = self.server.limits.header_timeout
        if raw.is_closing():  # evicted or expired before this task ran: nothing to upgrade
            self.raw = self.early = None
            self._forget()
            self.release_socket()
            return
        try:
            async with asyncio.timeout(2 * timeout):  # defence in depth over asyncio's own
                transport = await start_tls(
                    raw, self, context, timeout, self.server.tls_read_buffer
                )
        except asyncio.CancelledError:  # the server is shutting down
            self.early = None
            self._forget()
            self.release_socket()
            raise
        except Exception as error:
            # Failed, timed out or evicted: start_tls has aborted the socket, and asyncio does
            # not call connection_lost for a connection that never finished its handshake.
            # Routine for port scanners and broken clients, so debug level only.
            log.debug("TLS handshake failed: %r", error)
            drop_tracebacks(error)
            self.early = None
            self._forget()
            self.release_socket()
            return
        finally:
            self.raw = None
        if transport is None or transport.is_closing():  # aborted: connection_lost(None)
            self._forget()
            self.release_socket()
            return
        self.transport = transport
        if self.write_paused or self.stopped:
            transport.pause_reading()
        early, self.early = self.early or [], None
        for data in early:
            self.data_received(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        # A memoryview, not the bytearray: asyncio's TLS layer reads the rest of a record into
        # ``buf[offset:]``, which must be a view of this buffer, not a copy.
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        # data_received copies what it keeps for later (records that arrive before start_tls
        # returns), since this buffer is reused by the next read, of any connection.
        self.data_received(self.server.read_buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Parse ``data`` (httptools copies what it keeps); the wire-byte limits apply here."""
        if self.stopped:
            return
        if self.transport is None:  # TLS: the first records arrived before start_tls returned
            if self.early is not None:
                self.early.append(bytes(data))  # a copy: ``data`` may view the read buffer
            return
        # Between requests, with nothing queued: a read holding exactly a request parsed before
        # (the same bytes, so the same method, path, headers and keep-alive) is answered
        # without parsing it again. Only without basic auth, whose verdict is not a function
        # of the bytes alone (a reload changes the users).
        remember = None
        if (
            not (self.in_request or self.pending or self.waiting or self.write_paused)
            and len(data) <= MAX_REMEMBERED_REQUEST
            and self.server.authenticator is None
            and not self.closing
        ):
            remember = bytes(data)
            known = self.server.parsed.get(remember)
            if known is not None:
                self.begun += 1
                self._answer(self.transport, *known, True)
                return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        begun = self.begun
        try:
            if self.carried:
                # This request's headers did not end in an earlier read: count these bytes on
                # the wire, and parse no further than the limit.
                room = MAX_HEADER_BYTES - self.header_bytes
                if len(data) > room:
                    begun = self.begun
                    parser.feed_data(data[:room])
                    if self.in_headers and self.begun == begun:
                        self._halt(HEADERS_TOO_LARGE)
                    data = data[room:]
                else:
                    self.header_bytes += len(data)
            parser.feed_data(data)
        except _Stop:
            self._stop(self.stop_reason)
        except httptools.HttpParserUpgrade:
            self._stop(None)  # the upgrade request was answered (with Connection: close)
        except httptools.HttpParserError:
            self._stop(self.stop_reason or BAD_REQUEST)
        else:
            if self.in_headers:
                self.carried = True
            elif remember is not None and self.begun == begun + 1 and not self.stopped:
                self._remember(remember)

    def _remember(self, raw: bytes) -> None:
        """Keep the request just answered under its bytes, if answering it again needs
        nothing but them: one whole keep-alive GET or HEAD, answered at once."""
        if self.last is None or self.waiting or self.pending:
            return
        method, path, headers, keep_alive = self.last
        if keep_alive and method in (b"GET", b"HEAD") and path != RELOAD_PATH:
            parsed = self.server.parsed
            if len(parsed) >= PARSED_CACHE_SIZE:
                parsed.clear()  # bounded: a hostile client can vary its requests
            parsed[raw] = (method, path, headers)

    def pause_writing(self) -> None:
        """The write buffer is above its high-water mark: the client is not reading."""
        self.write_paused = True
        self._arm(self.server.limits.header_timeout)  # read within this, or be dropped
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.closing:  # the lingering-close deadline stands
            return
        limits = self.server.limits
        self._arm(limits.header_timeout if self.in_request else limits.idle_timeout)
        self._answer_pending()
        self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.transport = None
        self.pending.clear()
        self.parser = None  # the cycle (see __init__): freed now, by reference counting
        self.release_socket()

    def release_socket(self) -> None:
        """Stop counting this connection's socket in ``server.open_sockets`` (once)."""
        if self.socket_held:
            self.socket_held = False
            self.server.acceptor.socket_closed()

    def close(self) -> None:
        transport = self.transport or self.raw
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.begun += 1
        self.in_request = self.in_headers = True
        self.carried = False
        self.url = b""
        self.headers = {}
        self.header_bytes = _REQUEST_LINE_BYTES
        self.header_lines = 0
        self.rejection = None
        if not self.write_paused:  # else the deadline for reading the responses stands
            self._arm(self.server.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if not self.carried:
            self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_lines += 1
        if self.header_lines > MAX_HEADER_LINES:
            self._halt(HEADERS_TOO_LARGE)
        if not self.carried:
            self._count(len(name) + len(value) + _HEADER_LINE_BYTES)
        key = name.lower()
        if key in _WANTED_HEADERS:
            if key == b"content-length":
                if value.strip().lstrip(b"0"):
                    self.rejection = HAS_BODY
            elif key == b"transfer-encoding":
                self.rejection = HAS_BODY
            elif key not in self.headers:
                self.headers[key] = value
            elif key in _SINGLE_HEADERS:
                self.rejection = self.rejection or DUPLICATE_HEADER
            else:  # Accept: repeated lines are one comma-separated list (RFC 9110, 5.3)
                self.headers[key] += b", " + value

    def on_headers_complete(self) -> None:
        self.in_headers = self.carried = False
        if not self.write_paused:
            self._disarm()
        if self.rejection is not None:
            # A body is refused before any of it is read, whatever the method: answered at
            # once (after the requests before it) and the connection closed.
            self._halt(self.rejection)

    def on_message_complete(self) -> None:
        self.in_request = False
        if len(self.pending) >= MAX_PIPELINED:
            self._halt(TOO_MANY_PIPELINED)
        parser = self.parser
        assert parser is not None  # this is its callback
        # An Upgrade or CONNECT request is answered like any other, with Connection: close,
        # because llhttp hands everything after it to the (unsupported) new protocol.
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        url = self.url
        path = url.split(b"?", 1)[0] if b"?" in url else url
        self.last = (parser.get_method(), path, self.headers, keep_alive)
        if not (self.pending or self.waiting or self.write_paused or self.stopped):
            # Nothing queued before it (the common case): answered at once, not queued.
            transport = self.transport
            if transport is not None and not (self.closing or transport.is_closing()):
                self._answer(transport, parser.get_method(), path, self.headers, keep_alive)
                return
        self.pending.append((parser.get_method(), path, self.headers, keep_alive))
        if not (self.waiting or self.write_paused):
            self._answer_pending()

    # ------------------------------------------------------------ answering

    def _answer_pending(self) -> None:
        while self.pending and not self.waiting and not self.write_paused:
            transport = self.transport
            if transport is None or transport.is_closing() or self.closing:
                self.pending.clear()
                return
            if not self._answer(transport, *self.pending.popleft()):
                return
        if self.stopped and not (self.pending or self.waiting or self.write_paused):
            transport = self.transport
            if transport is not None and not (transport.is_closing() or self.closing):
                if self.final is not None:
                    self._send(self.final, keep_alive=False)
                else:
                    self._close(transport)

    def _answer(
        self,
        transport: asyncio.Transport,
        method: bytes,
        path: bytes,
        headers: dict[bytes, bytes],
        keep_alive: bool,
    ) -> bool:
        """Answer one request; False when it waits for a password check (``_resume``)."""
        head = method == b"HEAD"
        if self.server.allows(method, path):
            response = self.server.respond(path, headers, method)
        else:
            response = METHOD_NOT_ALLOWED
        if isinstance(response, Response):
            self._finish(response, keep_alive, head)
            return True
        self.waiting = True
        transport.pause_reading()
        task = self.server.spawn(response)
        task.add_done_callback(functools.partial(self._resume, keep_alive, head))
        return False

    def _resume(self, keep_alive: bool, head: bool, done: asyncio.Task[Response]) -> None:
        self.waiting = False
        if self.transport is None or self.transport.is_closing() or self.closing:
            return
        if done.cancelled():
            response = AUTH_FAILED
        elif (error := done.exception()) is not None:
            log.error("the basic-auth check failed; answering 503", exc_info=error)
            response = AUTH_FAILED
        else:
            response = done.result()
        if response is UNAUTHORIZED:
            self.auth_failures += 1
            if self.auth_failures >= MAX_AUTH_FAILURES:
                keep_alive = False
        self._finish(response, keep_alive, head)
        self._answer_pending()
        self._update_reading()

    def _finish(self, response: Response, keep_alive: bool, head: bool) -> None:
        self._send(response, keep_alive=keep_alive, head=head)
        if keep_alive:
            self.progress_at = now = self.loop.time()
            if not (self.pending or self.write_paused):
                self.deadline = now + self.server.limits.idle_timeout

    def _stop(self, final: Response | None) -> None:
        """Parse nothing more: answer what is queued, then ``final``, then close."""
        self.stopped = True
        self.final = final
        if self.transport is not None:
            self.transport.pause_reading()
        if not (self.waiting or self.write_paused):
            self._answer_pending()

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.closing:
            return
        if self.waiting or self.write_paused or self.stopped:
            transport.pause_reading()
        else:
            transport.resume_reading()

    # ------------------------------------------------------------ helpers

    def _halt(self, response: Response) -> NoReturn:
        self.stop_reason = response
        raise _Stop

    def _count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            self._halt(HEADERS_TOO_LARGE)

    def _send(self, response: Response, *, keep_alive: bool, head: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.closing:
            return
        transport.write(self.server.wire(response, keep_alive, head))
        if not keep_alive:
            self._close(transport)

    def _close(self, transport: asyncio.Transport) -> None:
        """Close once the buffered output is flushed, lingering: send FIN but keep reading
        (and discarding) until the client closes too. Closing a socket with unread input makes
        the kernel send a reset that can destroy the last response before the client reads it
        (the 413, 431 or 503 that explains the close). A client that neither reads nor closes
        within the header deadline is dropped by the sweep (``expire`` aborts it)."""
        self.stopped = self.closing = True
        self._arm(self.server.limits.header_timeout)
        if transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
        else:  # TLS: asyncio closes with close_notify, bounded by ssl_shutdown_timeout
            transport.close()

    def _arm(self, seconds: float) -> None:
        self.deadline = self.loop.time() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def _forget(self) -> None:
        self.server.connections.discard(self)
        self.deadline = math.inf

    def expire(self) -> None:
        """Called by the server's sweep once the deadline has passed."""
        self.deadline = math.inf
        if self.raw is not None:  # the TLS handshake took too long
            self.raw.abort()
            return
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing() or self.closing or self.write_paused:
            transport.abort()  # responses left unread: drop them and the connection
        elif self.in_request:
            self._send(REQUEST_TIMEOUT, keep_alive=False)
        else:
            self._close(transport)

    def evict(self) -> None:
        """Make room for a new connection (the cap is reached and this one has made the least
        progress for the longest); it stops counting at once."""
        self._forget()
        if self.raw is not None:
            self.raw.abort()
            return
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing() or self.closing or self.write_paused or self.waiting:
            transport.abort()
        elif self.in_request:
            self._send(EVICTED, keep_alive=False)
            transport.close()  # no lingering: it no longer counts, so the sweep won't visit it
        else:
            transport.close()  # idle keep-alive: a clean close, the client just reconnects
        if transport.get_write_buffer_size():
            transport.abort()  # it no longer counts, so it must not linger
