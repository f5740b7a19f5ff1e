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
executor (``WebConfig.submit``), with a cap on failed checks per connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import html
import logging
import math
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NoReturn, Protocol

import httptools

from exporter import __version__
from exporter.expose.negotiation import Negotiated, negotiate
from exporter.expose.snapshot import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    TEXT_CONTENT_TYPE_V1,
    Rendered,
)

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
# Each connection reads into one buffer of its own (``_Connection.get_buffer``), instead of
# asyncio allocating a fresh 256 KiB bytes object for every socket read and every TLS record
# (issue #11). A request's headers fit (see MAX_HEADER_BYTES), and so does the largest TLS
# record; anything longer simply arrives in more reads. Below the 64 KiB mmap threshold that
# exporter.allocator fixes, so it comes from the heap and is not mapped per connection.
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
AUTH_BUSY = Response(503, b"Too many password checks in progress\n", extra=b"Retry-After: 1\r\n")
AUTH_FAILED = Response(503, b"Service Unavailable\n")
BAD_REQUEST = Response(400, b"Bad Request\n")
EVICTED = Response(503, b"Too many connections\n", extra=b"Retry-After: 1\r\n")
HAS_BODY = Response(413, b"Request bodies are not accepted\n")
DUPLICATE_HEADER = Response(400, b"Repeated Authorization or Accept-Encoding header\n")
HEADERS_TOO_LARGE = Response(431, b"Request headers too large\n")
TOO_MANY_PIPELINED = Response(503, b"Too many pipelined requests\n")
METHOD_NOT_ALLOWED = Response(405, b"Method Not Allowed\n", extra=b"Allow: GET, HEAD\r\n")

LANDING_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tw-exporter</title></head>
<body><h1>tw-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for the platform's business metrics.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
""".encode()

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
        self.authenticator = authenticator
        self.extra_headers = encode_headers(extra_headers)
        self.ssl_context = ssl_context
        self.limits = limits or ServerLimits()
        # Every open connection, TLS handshakes included: what the cap counts and the sweep
        # visits.
        self.connections: set[_Connection] = set()
        # ``POST /-/reload`` (--web-enable-lifecycle): re-reads the configuration, off the event
        # loop, and answers whether it applied and the one line that says why (Reloader.reload).
        self.reload: Callable[[], Awaitable[ReloadOutcome]] | None = None
        # Handshakes and password checks in flight: referenced here so none is garbage
        # collected half-way, and cancelled on close.
        self.tasks: set[asyncio.Task[Any]] = set()
        self.evictions = 0
        self._negotiated: dict[tuple[bytes | None, bytes | None], Negotiated] = {}
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
        # Plain TCP even with TLS: each connection upgrades itself with ``loop.start_tls`` so
        # that a handshake counts toward the cap and is bounded by the header deadline
        # (``create_server(ssl=...)`` only shows a connection once its handshake is done).
        self._server = await loop.create_server(
            lambda: _Connection(self),
            host=host or None,
            port=port,
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
            for task in list(self.tasks):
                task.cancel()
            await self._server.wait_closed()

    def admit(self, connection: _Connection) -> None:
        """Count a new connection; when the cap is reached, first evict the connection that has
        made the least progress for the longest (idle keep-alive, trickled headers, a stalled
        handshake or unread responses): refusing newcomers would let whoever holds the slots
        deny every scrape and probe."""
        if len(self.connections) >= self.limits.max_connections:
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
                return Response(405, b"Method Not Allowed\n", extra=b"Allow: POST\r\n")
            return self._reload(self.reload)
        if path == b"/metrics":
            return self._metrics(headers)
        if path == b"/":
            return Response(200, LANDING_PAGE, content_type=b"text/html; charset=utf-8")
        return Response(404, b"Not Found\n")

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
            return Response(200, b"ok\n")
        if self.snapshot.ready:
            return Response(200, b"ready\n")
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
        if choice.openmetrics:
            encoded, content_type = rendered.openmetrics, OPENMETRICS_CONTENT_TYPE
        else:
            encoded = rendered.text
            content_type = TEXT_CONTENT_TYPE_V1 if choice.text_v1 else TEXT_CONTENT_TYPE
        if choice.gzip:
            return Response(200, encoded.gzipped, content_type.encode(), gzipped=True)
        return Response(200, encoded.body, content_type.encode())


class _Stop(Exception):
    """Raised from a parser callback: parse nothing more on this connection. httptools
    re-raises it as ``HttpParserCallbackError``, so the reason travels in ``stop_reason``."""


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parses requests with httptools and answers them in order.

    A buffered protocol: asyncio reads into ``self.buffer`` (``recv_into`` for TCP,
    ``SSLObject.read`` into it for TLS) and ``buffer_updated`` parses what arrived, so a read
    allocates nothing large (see READ_BUFFER_BYTES).

    Reading is paused while a password check runs, while the transport's write buffer is
    above its high-water mark (the client is not reading) and once parsing has stopped; after
    a stop the pending answers go out, then ``final`` (if any), then the connection closes.
    """

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
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
        self.buffer = memoryview(bytearray(READ_BUFFER_BYTES))

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
            return
        try:
            async with asyncio.timeout(2 * timeout):  # defence in depth over asyncio's own
                transport = await self.loop.start_tls(
                    raw,
                    self,
                    context,
                    server_side=True,
                    ssl_handshake_timeout=timeout,
                    ssl_shutdown_timeout=timeout,
                )
        except asyncio.CancelledError:  # the server is shutting down
            self.early = None
            self._forget()
            raise
        except Exception as error:
            # Failed, timed out or evicted: start_tls has closed the socket, and asyncio does
            # not call connection_lost for a connection that never finished its handshake.
            # Routine for port scanners and broken clients, so debug level only.
            log.debug("TLS handshake failed: %r", error)
            self.early = None
            self._forget()
            return
        finally:
            self.raw = None
        if transport is None or transport.is_closing():
            self._forget()
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
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        # data_received copies what it keeps for later (records that arrive before start_tls
        # returns), since this buffer is reused by the next read.
        self.data_received(self.buffer[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Parse ``data`` (httptools copies what it keeps); the wire-byte limits apply here."""
        if self.stopped:
            return
        if self.transport is None:  # TLS: the first records arrived before start_tls returned
            if self.early is not None:
                self.early.append(bytes(data))  # a copy: ``data`` may view the read buffer
            return
        try:
            if self.carried:
                # This request's headers did not end in an earlier read: count these bytes on
                # the wire, and parse no further than the limit.
                room = MAX_HEADER_BYTES - self.header_bytes
                if len(data) > room:
                    begun = self.begun
                    self.parser.feed_data(data[:room])
                    if self.in_headers and self.begun == begun:
                        self._halt(HEADERS_TOO_LARGE)
                    data = data[room:]
                else:
                    self.header_bytes += len(data)
            self.parser.feed_data(data)
        except _Stop:
            self._stop(self.stop_reason)
        except httptools.HttpParserUpgrade:
            self._stop(None)  # the upgrade request was answered (with Connection: close)
        except httptools.HttpParserError:
            self._stop(self.stop_reason or BAD_REQUEST)
        else:
            if self.in_headers:
                self.carried = True

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
        # An Upgrade or CONNECT request is answered like any other, with Connection: close,
        # because llhttp hands everything after it to the (unsupported) new protocol.
        keep_alive = parser.should_keep_alive() and not parser.should_upgrade()
        self.pending.append(
            (parser.get_method(), self.url.split(b"?", 1)[0], self.headers, keep_alive)
        )
        if not (self.waiting or self.write_paused):
            self._answer_pending()

    # ------------------------------------------------------------ answering

    def _answer_pending(self) -> None:
        while self.pending and not self.waiting and not self.write_paused:
            transport = self.transport
            if transport is None or transport.is_closing() or self.closing:
                self.pending.clear()
                return
            method, path, headers, keep_alive = self.pending.popleft()
            head = method == b"HEAD"
            if self.server.allows(method, path):
                response = self.server.respond(path, headers, method)
            else:
                response = METHOD_NOT_ALLOWED
            if isinstance(response, Response):
                self._finish(response, keep_alive, head)
                continue
            self.waiting = True
            transport.pause_reading()
            task = self.server.spawn(response)
            task.add_done_callback(functools.partial(self._resume, keep_alive, head))
            return
        if self.stopped and not (self.pending or self.waiting or self.write_paused):
            transport = self.transport
            if transport is not None and not (transport.is_closing() or self.closing):
                if self.final is not None:
                    self._send(self.final, keep_alive=False)
                else:
                    self._close(transport)

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
            self._send(Response(408, b"Request Timeout\n"), keep_alive=False)
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
