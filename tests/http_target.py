"""A real exporter process as the target of the HTTP attack tests (``test_http_hostile``,
``test_http_resources``): small limits, its sockets and RSS read with psutil, and the checks
that a legitimate client is still served during an attack."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil

from tests.conftest import StartExporter, wait_until_sync
from tests.helpers import HTTPResult, http_get

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 16
RSS_GROWTH_MIB = 40.0
RESPONSIVE = 1.0  # a scrape and /healthz must answer within this during an attack


@dataclass
class Target:
    url: str
    host: str
    port: int
    pid: int
    logs: Callable[[], str]

    def rss_mib(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def open_sockets(self) -> int:
        """The exporter's accepted TCP connections on its port (any state but LISTEN)."""
        process = psutil.Process(self.pid)
        listing = getattr(process, "net_connections", process.connections)  # psutil < 6
        return sum(
            1
            for c in listing(kind="tcp")
            if c.laddr and c.laddr.port == self.port and c.status != psutil.CONN_LISTEN
        )

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def assert_serving(self, get: Callable[[str], HTTPResult] | None = None) -> None:
        """A scrape and /healthz answer 200 within RESPONSIVE seconds each."""
        fetch = get or (lambda url: http_get(url, timeout=RESPONSIVE))
        for path in ("/metrics", "/healthz"):
            started = time.monotonic()
            result = fetch(self.url + path)
            took = time.monotonic() - started
            assert result.status == 200, (path, result.status, result.body[:200])
            assert took < RESPONSIVE, f"{path} took {took:.2f}s"

    def states(self) -> list[str]:
        process = psutil.Process(self.pid)
        listing = getattr(process, "net_connections", process.connections)  # psutil < 6
        return [
            str(c.status)
            for c in listing(kind="tcp")
            if c.laddr and c.laddr.port == self.port and c.status != psutil.CONN_LISTEN
        ]

    def assert_all_closed_within(self, seconds: float, keep: int = 0) -> None:
        try:
            wait_until_sync(lambda: self.open_sockets() <= keep, timeout=seconds)
        except AssertionError:
            raise AssertionError(f"still open after {seconds}s: {self.states()}") from None


def start_target(exporter_proc: StartExporter, dsn: str, *extra: str) -> Target:
    proc = exporter_proc(
        "--dsn",
        dsn,
        "--interval",
        "1",
        "--web-header-timeout",
        str(HEADER_TIMEOUT),
        "--web-idle-timeout",
        str(IDLE_TIMEOUT),
        "--web-max-connections",
        str(MAX_CONNECTIONS),
        *extra,
    )
    parts = urlsplit(proc.url)
    assert parts.hostname and parts.port
    return Target(proc.url, parts.hostname, parts.port, proc.proc.pid, proc.logs)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
