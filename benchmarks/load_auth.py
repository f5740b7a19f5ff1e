"""Load with TLS and basic auth on: ``/metrics`` under wrk, next to the same load in plain HTTP.

``python -m benchmarks.load_auth`` loads ``tw_bench_auth`` (100k tweets, ``exporter.ops.dataset``)
on ``TW_BENCH_DSN``, makes a self-signed certificate with the openssl CLI and a web-config file
(``tls_server_config`` + one bcrypt ``basic_auth_users`` entry), and starts two real
``tw-exporter run --interval 1`` processes on 127.0.0.1: one with ``--web-config-file``, one
without. Both cycle the whole time. Each pass is ``wrk -t2 -c8 -d20s --latency`` (wrk speaks
https and sends ``-H "Authorization: Basic ..."``), alternating plain and auth; a second, shorter
pair sends ``Connection: close`` so every request pays a TCP connect, a TLS handshake and a
basic-auth check (the bcrypt result is cached per user, so only the first costs a bcrypt call).
CPU per request is the server process's CPU delta (psutil) over the requests wrk completed,
minus the CPU its cycles burn (measured idle first). Writes ``results/LOAD_AUTH.md`` and
``results/LOAD_AUTH.json``; ``--keep`` keeps the database (dropped by default).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import psutil

from benchmarks.common import RESULTS, ROOT, SCALES, drop_dataset, ensure_dataset, log, machine
from benchmarks.scrape import WRK, Server, _seconds, cycles_done

SCALE = "auth"  # -> database tw_bench_auth (benchmarks.common.db_name)
TWEETS = 100_000
USER, PASSWORD = "prometheus", "bench-secret-password"
BCRYPT_COST = 10
LISTEN_RE = re.compile(r"listening on (https?://\S+?)/metrics")


# ------------------------------------------------------------------ TLS + web config


def make_web_config(directory: Path) -> Path:
    """A self-signed P-256 certificate for localhost/127.0.0.1 and a web-config using it."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "server.key", "-out", "server.crt", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        cwd=directory, check=True, capture_output=True,
    )  # fmt: skip
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()
    config = directory / "web-config.yml"
    config.write_text(
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "basic_auth_users:\n"
        f"  {USER}: '{hashed}'\n"
    )
    return config


def auth_header(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def fetch(url: str, authorization: str | None, timeout: float = 5.0) -> int:
    """Status of one GET (0 when the connection failed); self-signed certificates accepted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    request = urllib.request.Request(url)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


# ------------------------------------------------------------------ processes


@dataclass
class Exporter:
    name: str
    server: Server  # benchmarks.scrape.Server: .cpu(), .rss_mb(), .stop()
    authorization: str | None


def start_exporter(name: str, dsn: str, log_file: Path, *extra: str) -> Exporter:
    handle = log_file.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--dsn", dsn, "--interval", "1",
         "--listen", "127.0.0.1:0", "--log-level", "info", *extra],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle,
    )  # fmt: skip
    handle.close()
    authorization = auth_header() if extra else None
    deadline = time.monotonic() + 60
    url = ""
    while time.monotonic() < deadline and proc.poll() is None:
        match = LISTEN_RE.search(log_file.read_text())
        if match:
            url = match.group(1)
            if fetch(url + "/readyz", authorization) == 200:
                return Exporter(name, Server(proc, url), authorization)
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raise RuntimeError(f"exporter {name} did not become ready:\n{log_file.read_text()}")


# ------------------------------------------------------------------ wrk


def run_wrk(url: str, seconds: int, headers: list[str]) -> dict[str, float]:
    """``wrk -t2 -c8 -d<seconds>s --latency`` with headers; the same parsing as scrape.wrk,
    plus the socket error counts by kind."""
    argv = [WRK, "-t2", "-c8", f"-d{seconds}s", "--latency"]
    for header in headers:
        argv += ["-H", header]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(n) for n in socket.groups()) if socket else 0
    return {
        "rps": rps,
        "requests": requests,
        "p50": _seconds(lat["50"]),
        "p99": _seconds(lat["99"]),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket_errors,
        "errors": (int(non2xx.group(1)) if non2xx else 0) + socket_errors,
    }


def idle_cpu_per_second(exporter: Exporter, seconds: float) -> float:
    cpu0, t0 = exporter.server.cpu(), time.perf_counter()
    time.sleep(seconds)
    return (exporter.server.cpu() - cpu0) / (time.perf_counter() - t0)


def measure(exporter: Exporter, seconds: int, close: bool, idle_cpu: float) -> dict[str, float]:
    headers = [f"Authorization: {exporter.authorization}"] if exporter.authorization else []
    if close:
        headers.append("Connection: close")
    plain_url = exporter.server.url.replace("https://", "http://")
    c0 = cycles_done(plain_url) if exporter.authorization is None else None
    cpu0, t0 = exporter.server.cpu(), time.perf_counter()
    result = run_wrk(exporter.server.url + "/metrics", seconds, headers)
    wall = time.perf_counter() - t0
    cpu = exporter.server.cpu() - cpu0
    result["cpu_seconds"] = cpu
    result["cpu_per_request_us"] = cpu / max(1, result["requests"]) * 1e6
    result["net_cpu_per_request_us"] = (
        max(0.0, cpu - idle_cpu * wall) / max(1, result["requests"]) * 1e6
    )
    result["rss_mb"] = exporter.server.rss_mb()
    if c0 is not None:
        result["cycles_during"] = cycles_done(plain_url) - c0
    return result


# ------------------------------------------------------------------ the benchmark


def run(dsn: str, seconds: int, close_seconds: int, workdir: Path) -> dict[str, Any]:
    config = make_web_config(workdir)
    out: dict[str, Any] = {
        "wrk": f"wrk -t2 -c8 -d{seconds}s --latency",
        "close_seconds": close_seconds,
        "bcrypt_cost": BCRYPT_COST,
    }
    plain = start_exporter("plain", dsn, workdir / "plain.log")
    auth: Exporter | None = None
    try:
        auth = start_exporter("auth", dsn, workdir / "auth.log", "--web-config-file", str(config))
        base = auth.server.url
        out["checks"] = {
            "auth_url": base,
            "no_credentials": fetch(base + "/metrics", None),
            "wrong_password": fetch(base + "/metrics", auth_header(USER, "wrong")),
            "right_password": fetch(base + "/metrics", auth_header()),
            "plain_http_to_tls_port": fetch(base.replace("https://", "http://") + "/metrics", None),
        }
        log(f"[load_auth] checks: {out['checks']}")
        time.sleep(2)
        idle = {e.name: idle_cpu_per_second(e, 5.0) for e in (plain, auth)}
        out["idle_cpu_per_second"] = idle
        for mode, close, duration in (
            ("keepalive", False, seconds),
            ("close", True, close_seconds),
        ):
            for exporter in (plain, auth):
                key = f"{exporter.name}_{mode}"
                out[key] = measure(exporter, duration, close, idle[exporter.name])
                log(f"[load_auth] {key}: {out[key]}")
                time.sleep(1)
        out["auth_log_errors"] = [
            line
            for line in (workdir / "auth.log").read_text().splitlines()
            if " ERROR " in line or "Traceback" in line
        ]
    finally:
        plain.server.stop()
        if auth is not None:
            auth.server.stop()
    for mode in ("keepalive", "close"):
        p, a = out[f"plain_{mode}"], out[f"auth_{mode}"]
        out[f"ratio_{mode}"] = {
            "rps": a["rps"] / p["rps"],
            "p50": a["p50"] / p["p50"],
            "p99": a["p99"] / p["p99"],
            "cpu_per_request": a["net_cpu_per_request_us"] / max(1e-9, p["net_cpu_per_request_us"]),
        }
    return out


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]

    def row(label: str, x: dict[str, float]) -> str:
        return (
            f"| {label} | {x['requests']:,} | {x['non2xx']} | {x['socket_errors']} | "
            f"{x['rps']:,.0f} | {x['p50'] * 1e3:.2f} | {x['p99'] * 1e3:.2f} | "
            f"{x['cpu_per_request_us']:.0f} | {x['net_cpu_per_request_us']:.0f} |"
        )

    def ratio(label: str, x: dict[str, float]) -> str:
        return (
            f"| {label} | | | | {x['rps']:.2f}x | {x['p50']:.2f}x | {x['p99']:.2f}x | "
            f"| {x['cpu_per_request']:.2f}x |"
        )

    c = r["checks"]
    return "\n".join(
        [
            "# Load with TLS and basic auth",
            "",
            f"`python -m benchmarks.load_auth`: two real `tw-exporter run --interval 1` processes "
            f"on 127.0.0.1 against `tw_bench_auth` ({TWEETS:,} tweets), cycling throughout; one "
            "with `--web-config-file` (self-signed P-256 certificate from the openssl CLI, one "
            f"bcrypt user, cost {r['bcrypt_cost']}), one plain. Same run, passes alternated; "
            f"`{r['wrk']}` with `-H 'Authorization: Basic ...'` on https for auth, then "
            f"{r['close_seconds']} s per server with `-H 'Connection: close'` (a new TCP "
            "connection, TLS handshake and auth check per request; the bcrypt verdict is cached "
            "per user, so only the first request pays bcrypt). "
            f"Machine: {m['nproc']} x {m['cpu']}, {r['pg']}; wrk, servers and PostgreSQL share "
            "the cores, so compare ratios, not absolute numbers.",
            "",
            "| pass | requests | non-2xx | socket errors | req/s | p50 (ms) | p99 (ms) | "
            "CPU/req (µs) | net CPU/req (µs) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            row("plain, keep-alive", r["plain_keepalive"]),
            row("TLS + auth, keep-alive", r["auth_keepalive"]),
            ratio("**auth / plain**", r["ratio_keepalive"]),
            row("plain, Connection: close", r["plain_close"]),
            row("TLS + auth, Connection: close", r["auth_close"]),
            ratio("**auth / plain**", r["ratio_close"]),
            "",
            "net CPU/req subtracts the CPU the server's own cycles burn (measured idle, "
            f"{r['idle_cpu_per_second']['plain'] * 1e3:.0f} / "
            f"{r['idle_cpu_per_second']['auth'] * 1e3:.0f} ms per second plain / auth). "
            f"Sanity checks on the TLS port: no credentials -> {c['no_credentials']}, wrong "
            f"password -> {c['wrong_password']}, right password -> {c['right_password']}, plain "
            f"HTTP -> {c['plain_http_to_tls_port'] or 'connection refused/reset'}.",
            "",
        ]
    )


async def prepare(keep_existing: bool) -> tuple[str, str]:
    from benchmarks.common import pg_description

    SCALES.setdefault(SCALE, TWEETS)
    dsn = await ensure_dataset(SCALE, rebuild=not keep_existing)
    return dsn, await pg_description(dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="keep-alive pass length")
    parser.add_argument("--close-seconds", type=int, default=10, help="Connection: close pass")
    parser.add_argument("--keep", action="store_true", help="keep tw_bench_auth afterwards")
    parser.add_argument("--out", type=Path, default=RESULTS / "LOAD_AUTH.md")
    args = parser.parse_args()
    SCALES.setdefault(SCALE, TWEETS)
    try:
        dsn, pg = asyncio.run(prepare(keep_existing=True))
        with tempfile.TemporaryDirectory(prefix="tw-load-auth-") as directory:
            result = run(dsn, args.seconds, args.close_seconds, Path(directory))
    finally:
        if not args.keep:
            asyncio.run(drop_dataset(SCALE))
            log("[load_auth] dropped tw_bench_auth")
    result["machine"], result["pg"] = machine(), pg
    result["load_average"] = psutil.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.write_text(text)
    print(text)
    errors = sum(
        result[f"{k}_{m}"]["errors"] for k in ("plain", "auth") for m in ("keepalive", "close")
    )
    sys.exit(0 if errors == 0 else 1)


if __name__ == "__main__":
    main()
