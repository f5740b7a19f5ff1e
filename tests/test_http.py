"""The HTTP server: formats, probes, auth hook, and clients that misbehave."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.collectors import top_users
from exporter.http import MetricsServer, ServerLimits
from exporter.settings import query_params
from exporter.snapshot import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, SnapshotStore
from tests.conftest import wait_until
from tests.helpers import series


def users(*rows: tuple[str, int]) -> list:  # type: ignore[type-arg]
    return top_users.COLLECTOR.to_families(
        [{"username": name, "follower_count": n, "verified": False} for name, n in rows],
        query_params(),
    )


@pytest.fixture
def store() -> SnapshotStore:
    store = SnapshotStore(interval=1, max_staleness=3, process_metrics=False)
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


class FakeBcrypt:
    """Stands in for WebConfig's verifier (tested with real bcrypt in test_webconfig):
    "u:p" verifies only the slow way first, then from the cache."""

    def __init__(self) -> None:
        self.slow_checks = 0
        self.cached = False

    def check_cached(self, authorization: bytes | None) -> bool | None:
        if authorization != b"Basic dTpw":
            return False if authorization is None else None
        return True if self.cached else None

    def authorize(self, authorization: bytes | None) -> bool:
        self.slow_checks += 1
        self.cached = authorization == b"Basic dTpw"
        return self.cached


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
    response = await request(address, get("/metrics"))
    assert response.startswith(b"HTTP/1.1 503")
    for _, writer in idle:
        writer.close()
        await writer.wait_closed()

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
