"""Where the exporter's per-scrape CPU goes: the real ``exporter.expose.connection.Connection``
fed GET requests through a fake transport (no sockets, no wrk), in one process.

    python -m benchmarks.http_hotpath [--requests 200000]

Prints µs per request for the full path and with single pieces stubbed out, so a change to
``exporter/expose/connection.py`` can be judged by numbers. Not part of ``run_all`` (it is a
diagnosis).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from exporter.collectors import QUERY_NAMES
from exporter.expose import connection, http
from exporter.expose.snapshot import SnapshotStore

REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:10093\r\n\r\n"


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += 1

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


async def per_request(n: int, *, timers: bool = True) -> float:
    store = SnapshotStore(interval=15.0, queries=dict.fromkeys(QUERY_NAMES, (15.0, 60.0)))
    server = http.MetricsServer(store)
    conn = connection.Connection(server)
    if not timers:
        conn._arm = lambda seconds: None  # type: ignore[method-assign]
        conn._disarm = lambda: None  # type: ignore[method-assign]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(n):
        conn.data_received(REQUEST)
    took = time.perf_counter() - started
    assert transport.sent == n
    conn.connection_lost(None)
    return took / n * 1e6


async def raw_parse(n: int) -> float:
    import httptools

    class Sink:
        def on_url(self, url: bytes) -> None:
            pass

    parser = httptools.HttpRequestParser(Sink())
    started = time.perf_counter()
    for _ in range(n):
        parser.feed_data(REQUEST)
    return (time.perf_counter() - started) / n * 1e6


async def timers_only(n: int) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(n):
        loop.call_later(10, lambda: None).cancel()
        loop.call_later(75, lambda: None).cancel()
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int) -> None:
    rows = {
        "exporter _Connection, full path": await per_request(n),
        "same, connection timers stubbed out": await per_request(n, timers=False),
        "httptools parse only (no callbacks)": await raw_parse(n),
        "2 x call_later + cancel (per-request timers, replaced by deadlines)": await timers_only(n),
    }
    for label, us in rows.items():
        print(f"{label:50s} {us:6.2f} µs/request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().requests))
