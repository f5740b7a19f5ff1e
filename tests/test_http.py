"""The HTTP server: formats, probes, auth hook, and clients that misbehave."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.collectors import QUERY_NAMES, top_users
from exporter.config.settings import query_params
from exporter.expose.connection import MAX_HEADER_BYTES
from exporter.expose.http import READ_BUFFER_BYTES, MetricsServer, ServerLimits
from exporter.expose.snapshot import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, SnapshotStore
from tests.conftest import wait_until
from tests.helpers import series
from tests.pki import PKI


def users(*rows: tuple[str, int]) -> list:  # type: ignore[type-arg]
    return top_users.COLLECTOR.to_families(
        [{"username": name, "follower_count": n, "verified": False} for name, n in rows],
        query_params(),
    )


@pytest.fixture
def store() -> SnapshotStore:
    store = SnapshotStore(
        interval=1, queries=dict.fromkeys(QUERY_NAMES, (1.0, 3.0)), process_metrics=False
    )
    store.record_success("top_users", users(("ann", 5), ("bob", 3)), 0)
    store.render()
    return store


Start = Callable[..., "asyncio.Future[tuple[str, int]]"]


@pytest.fixture
async def serve(store: SnapshotStore) -> AsyncIterator[Callable[..., object]]:
    servers: list[MetricsServer] = []

    async def start(**kwargs: object) -> tuple[str, int]:
        server = MetricsServer(store, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        host, port = (await server.start("127.0.0.1", 0))[0]
        return host, port

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    for server in servers:
        await server.close()


async def request(address: tuple[str, int], raw: bytes, read_all: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5) if read_all else b""
    writer.close()
    return data


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return status, headers, body


async def test_metrics_text_openmetrics_and_gzip(serve: Callable[..., object]) -> None:
    address = await serve()  # type: ignore[misc]
    status, headers, body = split(await request(address, get("/metrics")))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == TEXT_CONTENT_TYPE
    assert (
        series(body.decode(), "tw_user_followers")[(("username", "ann"), ("verified", "false"))]
        == 5
    )

    status, headers, body = split(
        await request(
            address, get("/metrics", "Accept: application/openmetrics-text; version=1.0.0")
        )
    )
    assert headers["content-type"] == OPENMETRICS_CONTENT_TYPE
    assert body.endswith(b"# EOF\n")
    assert {f.name for f in om_parse(body.decode())} >= {"tw_user_followers", "tw_up"}

    status, headers, body = split(
        await request(address, get("/metrics", "Accept-Encoding: gzip, deflate"))
    )
    assert headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body)
    assert b"tw_user_followers" in gzip.decompress(body)


async def test_vanished_series_disappear_with_the_next_result(
    store: SnapshotStore, serve: Callable[..., object]
) -> None:
    address = await serve()  # type: ignore[misc]
    store.record_success("top_users", users(("cat", 9)), 0)
    store.render()
    _, _, body = split(await request(address, get("/metrics")))
    assert series(body.decode(), "tw_user_followers") == {
        (("username", "cat"), ("verified", "false")): 9.0
    }


async def test_probes_landing_and_errors(
    store: SnapshotStore, serve: Callable[..., object]
) -> None:
    address = await serve()  # type: ignore[misc]
    assert split(await request(address, get("/healthz")))[0].endswith("200 OK")
    status, _, body = split(await request(address, get("/readyz")))
    assert status.endswith("503 Service Unavailable")
    assert b"trending_hashtags" in body and b"platform_stats" in body
    store.record_success("trending_hashtags", [], 0)
    store.record_success("platform_stats", [], 0)
    # Ready only once /metrics serves the data, i.e. after the render that follows a result.
    assert split(await request(address, get("/readyz")))[0].endswith("503 Service Unavailable")
    store.render()
    assert split(await request(address, get("/readyz")))[0].endswith("200 OK")
    status, headers, body = split(await request(address, get("/")))
    assert status.endswith("200 OK") and b'href="metrics"' in body
    assert split(await request(address, get("/nope")))[0].endswith("404 Not Found")
    status, headers, _ = split(await request(address, get("/metrics", method="POST")))
    assert status.endswith("405 Method Not Allowed") and headers["allow"] == "GET, HEAD"
    status, headers, body = split(await request(address, get("/metrics", method="HEAD")))
    assert status.endswith("200 OK") and body == b"" and int(headers["content-length"]) > 0
    assert split(await request(address, b"NOT HTTP AT ALL\r\n\r\n"))[0].endswith("400 Bad Request")


async def test_keep_alive_and_pipelining(serve: Callable[..., object]) -> None:
    address = await serve()  # type: ignore[misc]
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + get("/metrics")
    response = await request(address, two)
    assert response.count(b"HTTP/1.1 200 OK") == 2
    assert response.index(b"ok\n") < response.index(b"tw_user_followers")


async def test_a_request_sent_again_is_answered_from_its_bytes_like_the_first_time(
    store: SnapshotStore, serve: Callable[..., object]
) -> None:
    """A scraper's request, remembered by its bytes after the first parse, gets the current
    snapshot and the same headers; requests that close, or that carry a body, are parsed
    (and refused) every time."""
    address = await serve()  # type: ignore[misc]
    server = serve.servers[-1]  # type: ignore[attr-defined]
    scrape = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
    reader, writer = await asyncio.open_connection(*address)

    async def exchange(raw: bytes) -> tuple[str, dict[str, str], bytes]:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status, headers, _ = split(head)
        length = 0 if raw.startswith(b"HEAD") else int(headers["content-length"])
        return status, headers, await asyncio.wait_for(reader.readexactly(length), 5)

    first = await exchange(scrape)
    assert scrape in server.parsed
    again = await exchange(scrape)
    assert again == first and first[1]["content-encoding"] == "gzip"
    store.record_success("top_users", users(("cat", 9)), 0)
    store.render()
    _, _, body = await exchange(scrape)  # the same bytes, the new snapshot
    assert series(gzip.decompress(body).decode(), "tw_user_followers") == {
        (("username", "cat"), ("verified", "false")): 9.0
    }
    head = scrape.replace(b"GET", b"HEAD")
    for _ in range(2):  # a HEAD gets the head alone, then the connection goes on
        status, headers, _ = await exchange(head)
        assert status == "HTTP/1.1 200 OK" and headers["content-length"] == str(len(body))
    assert (await exchange(scrape))[2] == body
    writer.close()
    closing = get("/healthz")
    with_body = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
    for _ in range(2):
        assert split(await request(address, closing))[1]["connection"] == "close"
        assert split(await request(address, with_body))[0].startswith("HTTP/1.1 413")
    assert closing not in server.parsed and with_body not in server.parsed


class FakeBcrypt:
    """Stands in for BasicAuth (tested with real bcrypt in test_webconfig):
    "u:p" verifies only the slow way first, then from the cache."""

    def __init__(self) -> None:
        self.slow_checks = 0
        self.cached = False
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def check_cached(self, authorization: bytes | None) -> bool | None:
        if authorization != b"Basic dTpw":
            return False if authorization is None else None
        return True if self.cached else None

    def authorize(self, authorization: bytes | None) -> bool:
        self.slow_checks += 1
        self.cached = authorization == b"Basic dTpw"
        return self.cached

    def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool]:
        return self.executor.submit(self.authorize, authorization)


async def test_auth_hook_protects_everything_but_probes(serve: Callable[..., object]) -> None:
    address = await serve(  # type: ignore[misc]
        authenticator=FakeBcrypt(), extra_headers=(("X-Test", "1"),)
    )
    status, headers, _ = split(await request(address, get("/metrics")))
    assert status.endswith("401 Unauthorized") and "basic" in headers["www-authenticate"].lower()
    assert split(await request(address, get("/")))[0].endswith("401 Unauthorized")
    status, headers, _ = split(await request(address, get("/metrics", "Authorization: Basic dTpw")))
    assert status.endswith("200 OK") and headers["x-test"] == "1"
    # Pipelined: a wrong password (slow check in a thread) then the right one (cached);
    # answers come back in order.
    both = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic bad\r\n\r\n" + get(
        "/metrics", "Authorization: Basic dTpw"
    )
    response = await request(address, both)
    assert response.index(b"401 Unauthorized") < response.index(b"200 OK")
    assert split(await request(address, get("/healthz")))[0].endswith("200 OK")
    assert split(await request(address, get("/readyz")))[0].endswith("503 Service Unavailable")


async def test_slow_client_is_cut_off(serve: Callable[..., object]) -> None:
    address = await serve(limits=ServerLimits(header_timeout=0.3))  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finish
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    assert response.startswith(b"HTTP/1.1 408")
    writer.close()
    # A client that connects and says nothing is closed too.
    reader, writer = await asyncio.open_connection(*address)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_connection_limit_and_header_size(serve: Callable[..., object]) -> None:
    address = await serve(limits=ServerLimits(max_connections=2))  # type: ignore[misc]
    idle = [await asyncio.open_connection(*address) for _ in range(2)]
    server = serve.servers[-1]  # type: ignore[attr-defined]

    async def both_accepted() -> bool:
        return len(server.connections) == 2

    await wait_until(both_accepted, timeout=5)
    # Full: the newcomer is served and the connection idle the longest is closed for it.
    response = await request(address, get("/metrics"))
    assert response.startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(idle[0][0].read(), 5) == b""
    assert server.evictions == 1
    for _, writer in idle:
        writer.close()

    address = await serve()  # type: ignore[misc]
    huge = get("/metrics", "X-Big: " + "a" * 40_000)
    assert (await request(address, huge)).startswith(b"HTTP/1.1 431")


async def test_idle_keep_alive_connection_is_closed_without_a_408(
    serve: Callable[..., object],
) -> None:
    address = await serve(limits=ServerLimits(idle_timeout=0.3))  # type: ignore[misc]
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing more sent
    writer.close()


class Writes(asyncio.Transport):
    """A transport whose client never reads: the first write crosses the high-water mark."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.writes: list[bytes] = []
        self.reading = True
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))
        if len(self.writes) == 1:
            self.protocol.pause_writing()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


async def test_one_read_of_thousands_of_requests_stops_at_the_pipelining_cap(
    store: SnapshotStore,
) -> None:
    from exporter.expose.connection import MAX_PIPELINED, Connection

    server = MetricsServer(store)
    connection = Connection(server)
    transport = Writes(connection)
    connection.connection_made(transport)
    connection.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
    # One answer went out and filled the buffer; reading paused, MAX_PIPELINED queued, the
    # rest of the read dropped with the parser stopped.
    assert len(transport.writes) == 1
    assert not transport.reading
    assert len(connection.pending) == MAX_PIPELINED
    assert connection.stopped and connection.final is not None
    connection.resume_writing()  # the client reads at last: the queue, then one 503, then FIN
    statuses = [w.split(b"\r\n", 1)[0] for w in transport.writes]
    assert statuses == [b"HTTP/1.1 200 OK"] * (1 + MAX_PIPELINED) + [
        b"HTTP/1.1 503 Service Unavailable"
    ]
    assert transport.eof and transport.reading  # lingering: FIN sent, reading to drain
    connection.connection_lost(None)
    assert connection not in server.connections


class Broken(FakeBcrypt):
    def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool]:
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        future.set_exception(RuntimeError("bcrypt exploded"))
        return future


class Busy(FakeBcrypt):
    def submit(self, authorization: bytes | None) -> None:  # type: ignore[override]
        return None


async def test_authenticator_errors_are_logged_and_a_full_queue_is_a_fast_503(
    serve: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    address = await serve(authenticator=Broken())  # type: ignore[misc]
    status, _, _ = split(await request(address, get("/metrics", "Authorization: Basic dTpw")))
    assert status.endswith("503 Service Unavailable")
    assert "basic-auth check failed" in caplog.text and "bcrypt exploded" in caplog.text

    address = await serve(authenticator=Busy())  # type: ignore[misc]
    status, headers, _ = split(await request(address, get("/metrics", "Authorization: Basic dTpw")))
    assert status.endswith("503 Service Unavailable") and headers["retry-after"] == "1"


async def test_password_checks_in_flight_are_referenced(serve: Callable[..., object]) -> None:
    gate = concurrent.futures.Future[bool]()

    class Slow(FakeBcrypt):
        def submit(self, authorization: bytes | None) -> concurrent.futures.Future[bool]:
            return gate

    address = await serve(authenticator=Slow())  # type: ignore[misc]
    server = serve.servers[-1]  # type: ignore[attr-defined]
    reader, writer = await asyncio.open_connection(*address)
    writer.write(get("/metrics", "Authorization: Basic dTpw"))

    async def task_held() -> bool:
        return len(server.tasks) == 1

    await wait_until(task_held, timeout=5)
    gate.set_result(True)
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 OK")
    assert not server.tasks
    writer.close()


@pytest.mark.parametrize(
    ("accept", "encoding", "expected"),
    [
        (None, None, (False, False, False)),
        (b"application/openmetrics-text", None, (True, False, False)),
        (b"application/openmetrics-text;q=0", None, (False, False, False)),
        (b"text/plain;q=0.9, application/openmetrics-text;q=0.5", None, (False, False, False)),
        (b"text/plain;version=1.0.0", None, (False, True, False)),
        (b"*/*", b"GZIP", (False, False, True)),
        (None, b"gzip;q=0, *", (False, False, False)),
        (None, b"gzip;q=bogus", (False, False, False)),
        (None, b"x-gzip;q=0.1", (False, False, True)),
    ],
)
def test_negotiation(
    accept: bytes | None, encoding: bytes | None, expected: tuple[bool, ...]
) -> None:
    from exporter.expose.negotiation import negotiate

    got = negotiate(accept, encoding)
    assert (got.openmetrics, got.text_v1, got.gzip) == expected


async def test_tls_connect_storm_through_a_small_cap_leaves_no_handshake_behind(
    serve: Callable[..., object], pki: PKI
) -> None:
    """A burst of silent TLS connections through a cap of 4: most are evicted mid-handshake,
    some before their handshake task has run; every task and connection is gone afterwards."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert, pki.server.key)
    address = await serve(  # type: ignore[misc]
        ssl_context=context, limits=ServerLimits(header_timeout=0.5, max_connections=4)
    )
    server = serve.servers[-1]  # type: ignore[attr-defined]
    opened = [await asyncio.open_connection(*address) for _ in range(40)]

    async def all_settled() -> bool:
        return not server.tasks and not server.connections

    await wait_until(all_settled, timeout=10)
    assert server.evictions >= 40 - 4
    for _, writer in opened:
        writer.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_requests_longer_than_the_read_buffer_arrive_whole(
    serve: Callable[..., object], pki: PKI, tls: bool
) -> None:
    """Three pipelined requests with 15 KiB headers each, written back to back: nearly three
    times the per-connection read buffer, so reads end mid-request (over TLS each write is its
    own record, shorter than the buffer, so asyncio reads the next record into the rest of the
    same buffer, which must be a view of it, not a copy). All three are answered in order, the
    last one closing the connection."""
    assert MAX_HEADER_BYTES > 15_100 and 2 * READ_BUFFER_BYTES < 3 * 15_000
    kwargs: dict[str, object] = {}
    client: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server.cert, pki.server.key)
        kwargs["ssl_context"] = context
        client = ssl.create_default_context(cafile=str(pki.ca.cert))
    address = await serve(**kwargs)  # type: ignore[misc]
    pad = "X-Pad: " + "p" * 15_000
    one = "\r\n".join(["GET /healthz HTTP/1.1", "Host: x", pad, "", ""]).encode()
    reader, writer = await asyncio.open_connection(
        *address, ssl=client, server_hostname="localhost" if tls else None
    )
    for raw in (one, one, get("/healthz", pad)):
        writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 3, data[:300]
    assert data.count(b"HTTP/1.1 ") == 3


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_closed_connections_are_freed_without_the_garbage_collector(
    serve: Callable[..., object], pki: PKI, tls: bool
) -> None:
    """With the collector off, every connection object is gone once its connection is: reset
    before a byte, reset mid-request, answered, evicted (cap 4), or with TLS failed in its
    handshake (evicted, reset, timed out). Before issue #21 each stayed in a reference cycle
    (its parser holding its callbacks; a failed handshake's traceback holding the frames that
    held it) until a full collection, which under churn came after thousands."""
    import gc
    import socket
    import struct
    import weakref

    from exporter.expose import connection as protocol

    kwargs: dict[str, object] = {"limits": ServerLimits(header_timeout=0.3, max_connections=4)}
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server.cert, pki.server.key)
        kwargs["ssl_context"] = context
    address = await serve(**kwargs)  # type: ignore[misc]
    server = serve.servers[-1]  # type: ignore[attr-defined]
    made: list[weakref.ref[protocol.Connection]] = []
    original = protocol.Connection.__init__

    def tracked(self: protocol.Connection, owner: MetricsServer) -> None:
        original(self, owner)
        made.append(weakref.ref(self))

    loop = asyncio.get_running_loop()
    gc.collect()
    gc.disable()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(protocol.Connection, "__init__", tracked)
            for i in range(40):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                if i % 3 == 1:
                    await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                elif i % 3 == 2 and not tls:
                    await loop.sock_sendall(sock, get("/healthz"))
                    await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                await asyncio.sleep(0.01)
                if i % 2:  # a reset; the others are left to the deadline or to eviction
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

            async def settled() -> bool:
                idle = not (server.connections or server.tasks)
                return idle and server.acceptor.open_sockets == 0

            await wait_until(settled, timeout=10)
            # connection_lost and the handshake tasks finish their last step: a few loop turns
            # (the assertion below says how many are still alive if they never go).
            with contextlib.suppress(AssertionError):
                await wait_until(
                    lambda: asyncio.sleep(0, all(ref() is None for ref in made)), timeout=5
                )
        assert len(made) == 40
        alive = [ref() for ref in made if ref() is not None]
        assert not alive, f"{len(alive)} of 40 connections still alive without a GC"
    finally:
        gc.enable()


async def test_the_loop_reports_each_message_once_a_minute_through_logging(
    serve: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    """The server installs an exception handler that logs through the ``asyncio`` logger (so
    in the configured format) and leaves out repeats: a hostile client must not be able to
    turn asyncio's one-traceback-per-event into a flood."""
    await serve()  # type: ignore[misc]
    loop = asyncio.get_running_loop()
    with caplog.at_level("ERROR", logger="asyncio"):
        for _ in range(100):
            loop.call_exception_handler({"message": "boom", "exception": RuntimeError("x")})
        loop.call_exception_handler({"message": "other"})
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert messages == ["boom: RuntimeError('x')", "other"]
    loop.set_exception_handler(None)
