"""The HTTP server: ``/metrics`` from pre-rendered bytes, plus probes and a landing page.

An asyncio server with httptools' HTTP/1.1 parser (the C parser uvicorn uses) instead of
``http.server``: a scrape is a dictionary lookup and one ``write`` of bytes rendered after the
last cycle, so it never waits for the database and costs close to what returning bytes costs.

This module is the server: it listens (``accepting``), counts connections against a cap that
evicts the connection which has made the least progress for the longest instead of refusing a
newcomer (so probes and scrapes always get in), sweeps deadlines once per period, checks
credentials (bcrypt on the authenticator's own bounded executor, ``BasicAuth.submit``) and
routes a path to its response (``responses``). Each client connection is a ``Connection``
(``connection``): buffered reads, parsing, pipelining, writes and backpressure, the TLS upgrade
(``tls``). Hostile clients are bounded; docs/http-limits.md states each limit and what a client
sees. A connection holds no buffer and no parser before its first bytes, and is freed by
reference counting when it closes (issue #21).

A scrape costs little Python: the response's bytes are built once per snapshot and format
(``MetricsServer.wire``), and a request whose bytes were seen before is not parsed again
(``Connection.data_received``); see docs/performance.md for the comparison with nginx.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from exporter.config.settings import WEB_MAX_CONNECTIONS
from exporter.expose.accepting import (
    BASE_DESCRIPTORS,
    Acceptor,
    LoopErrorLog,
    bind,
    fit_connection_cap,
)
from exporter.expose.connection import Connection, Deadlines
from exporter.expose.negotiation import Negotiated, negotiate
from exporter.expose.responses import (
    AUTH_BUSY,
    AUTH_FAILED,
    HEALTHY,
    LANDING,
    NOT_FOUND,
    POST_ONLY,
    READY,
    RELOAD_PATH,
    UNAUTHORIZED,
    Response,
    encode,
    encode_headers,
)
from exporter.expose.snapshot import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    TEXT_CONTENT_TYPE_V1,
    Rendered,
)
from exporter.expose.tls import TLS_READ_BUFFER_BYTES

log = logging.getLogger(__name__)


class Authenticator(Protocol):
    """Basic-auth verification (``exporter.config.basic_auth.BasicAuth`` implements it)."""

    def check_cached(self, authorization: bytes | None) -> bool | None:
        """The verdict if it is cheap to tell (cache hit, malformed header), else None."""

    def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool] | None:
        """Queue the full (bcrypt) check on the authenticator's own bounded executor; None when
        its queue is full (the server answers 503 with Retry-After at once)."""


# Every read lands in one of the server's two shared buffers (plaintext: ``Connection.get_buffer``;
# TLS ciphertext: ``exporter.expose.tls.TLSProtocol``) instead of asyncio allocating a fresh 256 KiB
# bytes object for every socket read and TLS record (issue #11), or a buffer per connection
# (issue #21: 16 KiB per connection, plus asyncio's 256 KiB per TLS connection, allocated before
# a client had sent a byte). Sharing is safe because a read is parsed before the next one
# starts: asyncio calls ``get_buffer``, reads, then ``buffer_updated`` without yielding, and the
# parser copies what it keeps. A request's headers fit (``connection.MAX_HEADER_BYTES``), and so
# does the largest TLS record; anything longer simply arrives in more reads.
READ_BUFFER_BYTES = 16 * 1024


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
class ServerLimits(Deadlines):
    """The server's limits: each connection's deadlines, and how many connections at once."""

    max_connections: int = WEB_MAX_CONNECTIONS  # TLS handshakes included; full -> evict
    # Descriptors the rest of the process may hold (database pool, HA lock connection); the
    # connection cap is lowered at start so that both fit under RLIMIT_NOFILE.
    reserved_descriptors: int = 0


_NEGOTIATED_CACHE_SIZE = 64
_PLAIN = Negotiated(openmetrics=False, text_v1=False, gzip=False)


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
        # The cap in force: --web-max-connections, lowered at start to fit the open-files limit.
        self.max_connections = self.limits.max_connections
        # Every open connection, TLS handshakes included: what the cap counts and the sweep
        # visits.
        self.connections: set[Connection] = set()
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
        self.max_connections, descriptors = fit_connection_cap(
            self.limits.max_connections, self.limits.reserved_descriptors
        )
        self.acceptor = Acceptor(self._serve_socket, self.max_connections)
        self._log_cap(descriptors)
        listeners = await bind(loop, host, port)
        self._sweeper = loop.create_task(self._sweep_expired())
        self.acceptor.start(listeners)
        return [sock.getsockname()[:2] for sock in listeners]

    def _log_cap(self, limit: int | None) -> None:
        """A warning when the cap had to be lowered to fit the open-files limit (``limit``)."""
        configured = self.limits.max_connections
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
        """Wrap an accepted socket in asyncio's transport and a ``Connection``."""
        # Its socket is counted until it releases it (once), whether or not the transport
        # came up.
        connection = Connection(self)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: connection, sock)
        except BaseException as error:
            sock.close()
            connection.release_socket()
            if isinstance(error, asyncio.CancelledError):
                raise
            log.debug("could not set up an accepted connection: %r", error)

    def admit(self, connection: Connection) -> None:
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
            found = encode(response, keep_alive, head, self.extra_headers)
            if len(response.wire) >= 8:  # bounded: the extra headers change only at reloads
                response.wire.clear()
            response.wire[key] = found
        return found
