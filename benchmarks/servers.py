"""Servers the scrape benchmark runs as separate processes.

* ``exporter``: the exporter's own wiring (``exporter.app.serve``'s components, unchanged),
  with ``Collector.run_query`` wrapped to append each query run's start/end (wall clock) to a
  file, so a latency probe can tell which scrapes overlapped a run.
* ``library``: ``prometheus_client.start_http_server`` serving a registry with the same number
  of static series as the exporter serves (the library's floor: it renders on every scrape).
* ``physical``: an asyncio Protocol that answers every request with one response rendered
  once at start (the physical floor of serving bytes from Python on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def run_exporter(args: argparse.Namespace) -> None:
    from exporter.config.settings import query_params
    from exporter.expose.http import MetricsServer
    from exporter.pipeline import build_pipeline

    cycle_log = Path(args.cycle_log) if args.cycle_log else None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        pipeline = build_pipeline(
            query_params(
                dsn=args.dsn,
                query_timeout=args.query_timeout,
                interval=args.interval,
                max_staleness=3 * args.interval + 60,
            )
        )
        await pipeline.open()
        server = MetricsServer(pipeline.store)
        await server.start("127.0.0.1", args.port)
        collector = pipeline.collector
        cycles: list[tuple[float, float]] = []
        original = collector.run_query

        async def logged_run(name: str) -> bool:
            started = time.time()
            try:
                return await original(name)
            finally:
                cycles.append((started, time.time()))

        collector.run_query = logged_run  # type: ignore[method-assign]
        pipeline.start()
        print("ready", flush=True)
        await stop.wait()
        await pipeline.close(5.0)
        await server.close()
        if cycle_log:
            cycle_log.write_text(json.dumps(cycles))

    asyncio.run(main())


def run_library(args: argparse.Namespace) -> None:
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    registry = CollectorRegistry()
    gauge = Gauge("tw_static_series", "Static series.", ["name"], registry=registry)
    for i in range(args.series):
        gauge.labels(name=f"series_{i}").set(i)
    start_http_server(args.port, addr="127.0.0.1", registry=registry)
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


class _Fixed(asyncio.Protocol):
    response = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(self.response)


def run_physical(args: argparse.Namespace) -> None:
    body = Path(args.body_file).read_bytes()
    _Fixed.response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Fixed, "127.0.0.1", args.port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        server.close()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="kind", required=True)
    exp = sub.add_parser("exporter")
    exp.add_argument("--dsn", required=True)
    exp.add_argument("--port", type=int, required=True)
    exp.add_argument("--interval", type=float, default=1.0)
    exp.add_argument("--query-timeout", type=float, default=1.0)
    exp.add_argument("--cycle-log", default="")
    lib = sub.add_parser("library")
    lib.add_argument("--port", type=int, required=True)
    lib.add_argument("--series", type=int, required=True)
    phy = sub.add_parser("physical")
    phy.add_argument("--port", type=int, required=True)
    phy.add_argument("--body-file", required=True)
    args = parser.parse_args()
    {"exporter": run_exporter, "library": run_library, "physical": run_physical}[args.kind](args)
    sys.exit(0)


if __name__ == "__main__":
    main()
