"""Accepting connections for the HTTP server without running out of descriptors (issue #21).

The server binds and accepts its own listening sockets instead of ``loop.create_server``:

* a few connections per readiness of a listening socket (``accept_batch``), so that what the
  connections accepted earlier sent (a scraper's request, a churning client's reset) is read
  between two batches, instead of a burst of newcomers evicting them before they were read;
* no more accepted sockets than the cap plus one batch (``Acceptor.budget``): beyond it,
  accepting waits until one of them closes;
* after ``accept()`` fails for want of descriptors or memory, a pause instead of a retry at
  once, with one warning per episode. asyncio's own accept loop logged a traceback and
  scheduled a retry once per pending connection, in a loop: 390,000 tracebacks and 99% CPU in
  65 s with ``ulimit -n 64``;
* at start, a connection cap that fits the open-files limit (``fit_connection_cap``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("exporter.expose.http")

MAX_ACCEPT_BATCH = 16
# After accept() fails for want of descriptors or memory, accepting pauses this long, or until
# one of the server's sockets closes (the listening socket stays readable: retrying at once
# would spin).
ACCEPT_PAUSE = 0.5
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# A warning about running out of descriptors, or a message from the event loop, is logged at
# most this often.
RESOURCE_WARNING_INTERVAL = 60.0
# Descriptors the process needs besides client connections and the database connections it is
# told about: standard streams, the event loop's epoll and self-pipe, the listening sockets,
# files read at start and at a reload (queries file, web config, certificates), the bcrypt
# thread, logging handlers, with headroom.
BASE_DESCRIPTORS = 32
LISTEN_BACKLOG = 1024


def accept_batch(cap: int) -> int:
    """Connections accepted per readiness event: an eighth of the cap, 1 to MAX_ACCEPT_BATCH."""
    return max(1, min(MAX_ACCEPT_BATCH, cap // 8))


def fit_connection_cap(configured: int, reserved: int) -> tuple[int, int | None]:
    """The connection cap that fits the open-files limit, and that limit (None: unlimited).

    ``reserved`` descriptors belong to the rest of the process (database pool, HA lock). Each
    connection is a descriptor, and so is each one accepted while an evicted one is still
    closing (up to one accept batch). The soft limit is first raised toward the hard one as far
    as the configured cap needs (Go programs such as node_exporter raise it to the hard limit
    at start); what is left after ``BASE_DESCRIPTORS`` and ``reserved`` bounds the cap, so that
    a full server runs out of slots (and evicts) before it runs out of descriptors (and can
    accept nothing, not even a probe)."""
    needed = configured + accept_batch(configured) + BASE_DESCRIPTORS + reserved
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return configured, None
    room = soft - BASE_DESCRIPTORS - reserved
    # The accept batch shrinks with the cap: the largest cap with cap + batch(cap) <= room.
    cap = configured
    while cap > 1 and cap + accept_batch(cap) > room:
        cap -= 1
    return cap, soft


def descriptor_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else str(soft)


async def bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (every interface when empty) and ``port``, bound the way
    ``loop.create_server`` binds them (one per address, SO_REUSEADDR, IPv6 sockets v6-only)."""
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # an address family this host does not support
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(error.strerror or str(error)).lower()}",
                ) from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in bound:
            sock.close()
        raise
    return bound


class Acceptor:
    """Accepts on the listening sockets and hands each new socket to ``serve``.

    ``serve``'s side reports each accepted socket's close with ``socket_closed`` (evicted ones
    included, which close an iteration after the eviction): that is what the budget counts."""

    def __init__(self, serve: Callable[[socket.socket], None], cap: int) -> None:
        self.serve = serve
        self.batch = accept_batch(cap)
        self.budget = cap + self.batch
        self.open_sockets = 0  # accepted and not closed yet
        self.listeners: list[socket.socket] = []
        self._accepting = False
        self._pause: asyncio.TimerHandle | None = None
        self._starved = False  # in an episode of accept() failing
        self._last_warning = -math.inf

    def start(self, listeners: list[socket.socket]) -> None:
        self.listeners = listeners
        self._resume()

    def close(self) -> None:
        self._stop_reading()
        if self._pause is not None:
            self._pause.cancel()
            self._pause = None
        listeners, self.listeners = self.listeners, []
        for sock in listeners:
            sock.close()

    def socket_closed(self) -> None:
        """An accepted socket is closed (or is about to be, in this loop iteration): a
        descriptor is free, so accepting resumes if it paused for the budget or after a failed
        accept (the pause only stops retrying while nothing was freed; waiting it out after a
        close would drain the backlog at one batch per pause)."""
        self.open_sockets -= 1
        if self._accepting or self.open_sockets >= self.budget:
            return
        if self._pause is not None:
            self._pause.cancel()
        self._resume()

    def _resume(self) -> None:
        self._pause = None
        if self._accepting or not self.listeners:
            return
        loop = asyncio.get_running_loop()
        for sock in self.listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._accepting = True

    def _stop_reading(self) -> None:
        if not self._accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self.listeners:
            loop.remove_reader(sock.fileno())
        self._accepting = False

    def _accept(self, listener: socket.socket) -> None:
        """Accept up to one batch of pending connections (the loop calls this while the
        listening socket is readable)."""
        for _ in range(self.batch):
            if self.open_sockets >= self.budget:
                self._stop_reading()  # ``socket_closed`` resumes
                return
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as error:
                self._failed(error)
                return
            self._starved = False
            self.open_sockets += 1
            self.serve(sock)

    def _failed(self, error: OSError) -> None:
        """Pause for ACCEPT_PAUSE; one warning per episode, at most one per
        RESOURCE_WARNING_INTERVAL."""
        self._stop_reading()
        if self._pause is None:
            self._pause = asyncio.get_running_loop().call_later(ACCEPT_PAUSE, self._resume)
        if self._starved:
            return
        self._starved = True
        now = time.monotonic()
        if now - self._last_warning < RESOURCE_WARNING_INTERVAL:
            return
        self._last_warning = now
        reason = (
            "out of file descriptors"
            if error.errno in (errno.EMFILE, errno.ENFILE)
            else "out of system resources"
            if error.errno in _OUT_OF_RESOURCES
            else "accept() failed"
        )
        log.warning(
            "cannot accept HTTP connections, %s (%s; %d client sockets open, open-files limit "
            "%s): accepting pauses for %gs at a time until it succeeds; this is logged once "
            "per %gs",
            reason,
            error.strerror or error,
            self.open_sockets,
            descriptor_limit(),
            ACCEPT_PAUSE,
            RESOURCE_WARNING_INTERVAL,
        )


class LoopErrorLog:
    """The event loop's exception handler: what asyncio reports (a callback that raised, a
    transport's fatal error) is logged through the ``asyncio`` logger, so in the configured
    format, and each message at most once per RESOURCE_WARNING_INTERVAL with a count of the
    ones left out: asyncio's default handler logs every occurrence, which a hostile client
    can turn into a flood."""

    MAX_MESSAGES = 64

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, int]] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled exception in the event loop")
        now = time.monotonic()
        last, left_out = self._seen.get(message, (-math.inf, 0))
        if now - last < RESOURCE_WARNING_INTERVAL:
            self._seen[message] = (last, left_out + 1)
            return
        if len(self._seen) >= self.MAX_MESSAGES:
            self._seen.clear()
        self._seen[message] = (now, 0)
        error = context.get("exception")
        logging.getLogger("asyncio").error(
            "%s%s%s",
            message,
            f": {error!r}" if error is not None else "",
            f" ({left_out} more like it since the last report)" if left_out else "",
            exc_info=error if isinstance(error, BaseException) else None,
        )
