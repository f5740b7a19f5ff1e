"""Scrape cost: the exporter's /metrics under wrk vs the library floor and the physical floor.

All servers run as separate processes on 127.0.0.1 and are measured in the same run with the
same wrk settings (``wrk -t2 -c8 -d20s --latency``); CPU per request is the server process's
CPU time delta (psutil) divided by the requests wrk completed.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import ROOT, log

WRK = "wrk"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def wait_for(url: str, status: int = 200, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while get(url, 2.0)[0] != status:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer {status} within {timeout}s")
        time.sleep(0.1)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mb(self) -> float:
        return float(self.ps.memory_info().rss) / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start(argv: list[str], port: int, ready_path: str, cwd: Path = ROOT) -> Server:
    """``python <argv>`` run in ``cwd`` (the tree whose code it runs), once ``ready_path``
    answers 200 on ``port``; stopped again if it never does."""
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        wait_for(server.url + ready_path)
    except Exception:
        server.stop()
        raise
    return server


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, seconds: int, threads: int = 2, connections: int = 8) -> dict[str, float]:
    out = subprocess.run(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": requests,
        "p50": _seconds(lat["50"]),
        "p99": _seconds(lat["99"]),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": 1 if socket_errors else 0,
    }


def measure_wrk(server: Server, path: str, seconds: int) -> dict[str, float]:
    cpu0 = server.cpu()
    result = wrk(server.url + path, seconds)
    result["cpu_seconds"] = server.cpu() - cpu0
    result["cpu_per_request_us"] = result["cpu_seconds"] / max(1, result["requests"]) * 1e6
    result["rss_mb"] = server.rss_mb()
    return result


def cycles_done(url: str) -> float:
    _, body = get(url + "/metrics")
    match = re.search(
        rb'^tw_exporter_query_duration_seconds_count\{query="top_users"\} (\S+)', body, re.M
    )
    return float(match.group(1)) if match else 0.0


def probe(url: str, seconds: float, every: float = 0.02) -> list[tuple[float, float]]:
    """Sequential keep-alive scrapes at a light rate: (wall start, latency seconds) each."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    samples: list[tuple[float, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wall, started = time.time(), time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        samples.append((wall, time.perf_counter() - started))
        time.sleep(every)
    conn.close()
    return samples


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(dsn: str, overlap_dsn: str, seconds: int, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"wrk_seconds": seconds}
    idle_seconds = 5 if quick else 10

    # 1. The real `tw-exporter run`, --interval 1: idle CPU per cycle, then wrk while cycling.
    port = free_port()
    exporter = start(
        ["-m", "exporter", "run", "--dsn", dsn, "--interval", "1", "--listen",
         f"127.0.0.1:{port}", "--log-level", "warning"],
        port,
        "/readyz",
    )  # fmt: skip
    try:
        time.sleep(2)
        c0, cpu0 = cycles_done(exporter.url), exporter.cpu()
        time.sleep(idle_seconds)
        c1, cpu1 = cycles_done(exporter.url), exporter.cpu()
        out["idle"] = {
            "cycles": c1 - c0,
            "cpu_per_cycle_ms": (cpu1 - cpu0) / max(1.0, c1 - c0) * 1e3,
            "rss_mb": exporter.rss_mb(),
        }
        log(f"[scrape] exporter idle: {out['idle']}")
        _, body = get(exporter.url + "/metrics")
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        out["series"], out["body_bytes"] = series, len(body)
        c0 = cycles_done(exporter.url)
        result = measure_wrk(exporter, "/metrics", seconds)
        cycles = cycles_done(exporter.url) - c0
        cycle_cpu = cycles * out["idle"]["cpu_per_cycle_ms"] / 1e3
        result["cycles_during"] = cycles
        result["net_cpu_per_request_us"] = (
            max(0.0, result["cpu_seconds"] - cycle_cpu) / max(1, result["requests"]) * 1e6
        )
        out["exporter"] = result
        log(f"[scrape] exporter: {result}")
    finally:
        exporter.stop()

    # 2. The library floor: prometheus_client's own server, same number of series.
    port = free_port()
    library = start(
        ["-m", "benchmarks.servers", "library", "--port", str(port), "--series", str(series)],
        port,
        "/metrics",
    )
    try:
        out["library"] = measure_wrk(library, "/metrics", seconds)
        log(f"[scrape] library floor: {out['library']}")
    finally:
        library.stop()

    # 3. The physical floor: bytes rendered once, written by an asyncio Protocol.
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as handle:
        handle.write(body)
    port = free_port()
    physical = start(
        ["-m", "benchmarks.servers", "physical", "--port", str(port), "--body-file", handle.name],
        port,
        "/metrics",
    )
    try:
        out["physical"] = measure_wrk(physical, "/metrics", seconds)
        log(f"[scrape] physical floor: {out['physical']}")
    finally:
        physical.stop()
        Path(handle.name).unlink()

    # 4. Scrapes overlapping a cycle vs not, on a big dataset where a cycle takes ~1 s.
    out["overlap"] = overlap(overlap_dsn, 8 if quick else 20)
    return out


def overlap(dsn: str, seconds: float) -> dict[str, Any]:
    port = free_port()
    cycle_log = Path(tempfile.mkdtemp()) / "cycles.json"
    server = start(
        ["-m", "benchmarks.servers", "exporter", "--dsn", dsn, "--port", str(port),
         "--interval", "2", "--query-timeout", "2", "--cycle-log", str(cycle_log)],
        port,
        "/metrics",
    )  # fmt: skip
    try:
        time.sleep(3)
        samples = probe(server.url, seconds)
    finally:
        server.stop()
    cycles = json.loads(cycle_log.read_text()) if cycle_log.exists() else []
    inside, outside = [], []
    for wall, latency in samples:
        end = wall + latency
        busy = any(s <= end and wall <= e for s, e in cycles)
        (inside if busy else outside).append(latency)
    durations = [e - s for s, e in cycles[1:]]
    result = {
        "cycle_median_s": statistics.median(durations) if durations else float("nan"),
        "busy_fraction": len(inside) / max(1, len(samples)),
        "during_cycle": {"n": len(inside), "p50": pct(inside, 0.5), "p99": pct(inside, 0.99)},
        "between_cycles": {"n": len(outside), "p50": pct(outside, 0.5), "p99": pct(outside, 0.99)},
    }
    log(f"[scrape] overlap: {result}")
    return result
