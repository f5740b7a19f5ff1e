"""One HTTP/1.1 client connection of the metrics server: reading, parsing, answering in order.

An asyncio buffered protocol with httptools' parser (the C parser uvicorn uses). Per
connection it counts header bytes and lines on the wire, refuses request bodies, remembers
requests it has seen by their bytes (a scraper's request is parsed once), keeps pipelined
requests in order, pauses reading while responses wait unread or a password check runs, and
upgrades itself to TLS (``exporter.expose.tls``) so that a handshake counts toward the
connection cap and is bounded by the header deadline. What to answer comes from the server
(``exporter.expose.http.MetricsServer``, described here by ``Host`` so that the server
imports its connections and not the other way round); docs/http-limits.md states each limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import httptools

from exporter.config.settings import WEB_HEADER_TIMEOUT, WEB_IDLE_TIMEOUT
from exporter.expose.accepting import Acceptor
from exporter.expose.responses import (
    AUTH_FAILED,
    BAD_REQUEST,
    DUPLICATE_HEADER,
    EVICTED,
    HAS_BODY,
    HEADERS_TOO_LARGE,
    METHOD_NOT_ALLOWED,
    RELOAD_PATH,
    REQUEST_TIMEOUT,
    TOO_MANY_PIPELINED,
    UNAUTHORIZED,
    Response,
)
from exporter.expose.tls import drop_tracebacks, start_tls

# The logger's name predates this module (it was the server's): log filters keep working.
log = logging.getLogger("exporter.expose.http")

# Headers the server reads; the last two only to refuse a request body.
_WANTED_HEADERS = frozenset(
    {b"accept", b"accept-encoding", b"authorization", b"content-length", b"transfer-encoding"}
)
# Headers whose repetition would make "which one counts" ambiguous: 400 rather than guess.
_SINGLE_HEADERS = frozenset({b"accept-encoding", b"authorization"})

# Request line plus header lines, counted on the wire (see ``Connection.data_received``).
MAX_HEADER_BYTES = 16 * 1024
MAX_HEADER_LINES = 100
# The fewest wire bytes a request line adds beyond its URL ("GET " + " HTTP/1.1" + CRLF, plus
# the blank line ending the headers), and a header line beyond its name and value (":" + CRLF).
_REQUEST_LINE_BYTES = 17
_HEADER_LINE_BYTES = 3
# Requests parsed but not yet answered on one connection (they queue only while the client does
# not read its responses or a password check runs); one more gets 503 and the connection closes.
MAX_PIPELINED = 32
# Requests remembered by their bytes (``Connection.data_received``): a scraper sends the same
# bytes for every scrape, so its request is parsed once, not once per scrape.
PARSED_CACHE_SIZE = 32
MAX_REMEMBERED_REQUEST = 2048
# Failed bcrypt checks on one connection; the last one's 401 closes the connection, so a
# password guesser must reconnect (and, with TLS, handshake) for every few guesses.
MAX_AUTH_FAILURES = 3


@dataclass(frozen=True)
class Deadlines:
    """The time limits each connection enforces (part of ``exporter.expose.http.ServerLimits``)."""

    # The TLS handshake and the first request byte, then each request's headers from its first
    # byte, must arrive within this; it is also how long a response may sit unread before the
    # connection is dropped, and how long a closing connection may take to flush.
    header_timeout: float = WEB_HEADER_TIMEOUT
    idle_timeout: float = WEB_IDLE_TIMEOUT  # keep-alive connections idle longer are closed


class Host(Protocol):
    """What a connection needs of its server (``exporter.expose.http.MetricsServer``)."""

    ssl_context: ssl.SSLContext | None  # None: plain HTTP
    acceptor: Acceptor  # told when this connection's socket closes
    read_buffer: memoryview  # shared by every connection (plaintext)
    tls_read_buffer: memoryview  # shared by every connection (ciphertext)
    connections: set[Connection]  # what the cap counts and the sweep visits
    # Requests answered before, by their bytes (``Connection.data_received``)
    parsed: dict[bytes, tuple[bytes, bytes, dict[bytes, bytes]]]

    @property
    def limits(self) -> Deadlines: ...
    @property
    def authenticator(self) -> object | None: ...

    def admit(self, connection: Connection) -> None: ...
    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    def allows(self, method: bytes, path: bytes) -> bool: ...
    def respond(
        self, path: bytes, headers: dict[bytes, bytes], method: bytes = b"GET"
    ) -> Response | Coroutine[Any, Any, Response]: ...
    def wire(self, response: Response, keep_alive: bool, head: bool = False) -> bytes: ...


class _Stop(Exception):
    """Raised from a parser callback: parse nothing more on this connection. httptools
    re-raises it as ``HttpParserCallbackError``, so the reason travels in ``stop_reason``."""


class Connection(asyncio.BufferedProtocol):
    """One client connection: parses requests with httptools and answers them in order.

    A buffered protocol: asyncio reads into the server's shared ``read_buffer`` (``recv_into``
    for TCP, ``SSLObject.read`` into it for TLS) and ``buffer_updated`` parses what arrived, so
    a read allocates nothing large and an idle connection holds no buffer
    (``http.READ_BUFFER_BYTES``).

    Reading is paused while a password check runs, while the transport's write buffer is
    above its high-water mark (the client is not reading) and once parsing has stopped; after
    a stop the pending answers go out, then ``final`` (if any), then the connection closes.
    """

    def __init__(self, server: Host) -> None:
        self.server = server
        # Created with the first bytes (most hostile connections never send any) and dropped
        # with the connection: it holds this protocol's bound methods, a reference cycle that
        # only the garbage collector would otherwise free (issue #21: ~3,500 connections of a
        # churning client alive at once).
        self.parser: httptools.HttpRequestParser | None = None
        self.socket_held = True  # counted in ``server.acceptor.open_sockets`` until released
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
        """Stop counting this connection's socket in ``server.acceptor.open_sockets`` (once)."""
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
        request = self.last = (parser.get_method(), path, self.headers, keep_alive)
        if not (self.pending or self.waiting or self.write_paused or self.stopped):
            # Nothing queued before it (the common case): answered at once, not queued.
            transport = self.transport
            if transport is not None and not (self.closing or transport.is_closing()):
                self._answer(transport, *request)
                return
        self.pending.append(request)
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
