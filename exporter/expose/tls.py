"""TLS for the HTTP server's connections: asyncio's ``start_tls`` without its per-connection
256 KiB buffer, and without the reference cycle a failed handshake leaves (issue #21).

Each connection upgrades itself after the TCP accept (``Connection._handshake``), so that a
handshake counts toward the connection cap and is bounded by the header deadline. Hostile
clients make many handshakes fail (never finished, evicted, reset): each must cost little
while it runs and be freed at once when it ends."""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import Any

# Ciphertext is read into one buffer shared by every connection: a full TLS record (16 KiB plus
# overhead) with room to spare.
TLS_READ_BUFFER_BYTES = 32 * 1024


class TLSProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, reading ciphertext into a buffer shared by all connections.

    ``SSLProtocol`` allocates a 256 KiB read buffer in its constructor, for every connection,
    before the client has sent a byte: 250 stalled handshakes held 64 MiB. What is read is
    copied into the protocol's memory BIO at once (``buffer_updated``), before the next read
    of any connection, so one buffer serves them all."""

    max_size = 0  # what SSLProtocol.__init__ allocates; reads use ``shared`` instead

    def __init__(self, shared: memoryview, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ssl_buffer_view = shared  # what ``buffer_updated`` copies into the BIO from

    def get_buffer(self, n: int) -> memoryview:
        return self._ssl_buffer_view


async def start_tls(
    raw: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    deadline: float,
    buffer: memoryview,
) -> asyncio.Transport | None:
    """``loop.start_tls`` (the same steps as asyncio 3.11-3.13) with ``TLSProtocol``.

    Returns None when the connection was aborted during the handshake (asyncio then completes
    the handshake's future without an exception). On failure the TCP transport is aborted at
    once (there is nothing to flush), and the caller must drop the exception's tracebacks
    (``drop_tracebacks``)."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    tls = TLSProtocol(
        buffer,
        loop,
        protocol,
        context,
        waiter,
        server_side=True,
        call_connection_made=False,
        ssl_handshake_timeout=deadline,
        ssl_shutdown_timeout=deadline,
    )
    raw.pause_reading()
    raw.set_protocol(tls)
    made = loop.call_soon(tls.connection_made, raw)
    resumed = loop.call_soon(raw.resume_reading)
    try:
        await waiter
    except BaseException:
        made.cancel()
        resumed.cancel()
        raw.abort()
        raise
    transport: asyncio.Transport | None = tls._app_transport
    return transport


def drop_tracebacks(error: BaseException) -> None:
    """Break the reference cycle a failed handshake leaves behind.

    The exception asyncio raises from the handshake is also stored in the future it awaited;
    its traceback holds the frames that hold that future (and the TLS protocol and transport,
    with their buffers): a cycle, freed only by a full garbage collection, which under a
    stream of aborted handshakes comes too seldom (RSS 68 -> 679 MiB in 75 s, issue #21).
    Clearing the tracebacks (of the exception and of its causes) frees all of it at once."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending += (current.__cause__, current.__context__)
