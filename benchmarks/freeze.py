"""Repeated freezes: the database stops answering again and again; nothing may leak.

``python -m benchmarks.freeze --freezes 20`` starts a private embedded PostgreSQL (never the
shared server), loads a small dataset, and runs the exporter *in this process* (the same
``exporter.app.serve`` that ``tw-exporter run`` runs, ``--interval 1 --query-timeout 1``), so
its asyncio tasks can be counted too. Each round SIGSTOPs every process of the cluster for
``--freeze-seconds`` while ``/metrics`` is scraped every 0.1 s, then SIGCONTs them and waits for
the next good run.

Recorded before the first and after the last freeze (each after a few good cycles): this
process' file descriptors and RSS (psutil), its asyncio tasks, the exporter's backends
(``pg_stat_activity``, ``application_name = 'tw-exporter'``); per round, the time from the
freeze to ``tw_up 0`` and from the thaw to ``tw_up 1`` with fresh data, and the slowest scrape.
Writes ``results/FREEZE.md`` and ``results/FREEZE.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.common import RESULTS, log, machine
from benchmarks.soak import total, value
from exporter.app import serve
from exporter.collectors import QUERY_NAMES
from exporter.config.http_security import HTTPSecurity
from exporter.config.settings import query_params
from exporter.db.database import APPLICATION_NAME
from exporter.db.failures import FAILURE_REASONS
from exporter.ops import dataset
from exporter.ops.embedded import EmbeddedPostgres

DATABASE = "tw_freeze"
TWEETS = 5_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def scrape(url: str) -> tuple[str, float]:
    def get() -> tuple[str, float]:
        import urllib.request

        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        return body, time.monotonic() - started

    return await asyncio.to_thread(get)


async def wait_for(
    url: str, condition: Callable[[str], bool], timeout: float
) -> tuple[float, float]:
    """Seconds until a scrape satisfies ``condition``, and the slowest scrape meanwhile."""
    started = time.monotonic()
    slowest = 0.0
    while True:
        body, seconds = await scrape(url)
        slowest = max(slowest, seconds)
        if condition(body):
            return time.monotonic() - started, slowest
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


async def backends(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME
        )
        return int(count)
    finally:
        await conn.close()


async def snapshot(admin_dsn: str, url: str) -> dict[str, Any]:
    """Resources after a few good cycles, so the pool is in its steady state."""
    for _ in range(3):
        first = value((await scrape(url))[0], "tw_exporter_cycle_duration_seconds")
        await wait_for(
            url,
            lambda body, first=first: value(body, "tw_exporter_cycle_duration_seconds") != first,
            timeout=10,
        )
    process = psutil.Process()
    return {
        "fds": process.num_fds(),
        "rss_mib": round(process.memory_info().rss / 2**20, 1),
        "tasks": len(asyncio.all_tasks()),
        "backends": await backends(admin_dsn),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="tw-freeze-pg-"))
    server = EmbeddedPostgres(directory / "pgdata")
    stop = asyncio.Event()
    try:
        admin = await asyncpg.connect(server.dsn)
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
        await admin.close()
        dsn = server.dsn_for(DATABASE)
        conn = await asyncpg.connect(dsn)
        await dataset.create_schema(conn)
        await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=TWEETS))
        await conn.close()

        port = free_port()
        settings = query_params(
            dsn=dsn,
            listen_host="127.0.0.1",
            listen_port=port,
            interval=args.interval,
            query_timeout=args.query_timeout,
            max_staleness=3 * args.interval,
        )
        exporter = asyncio.create_task(serve(settings, HTTPSecurity(), stop))
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(100):
            try:
                await scrape(url)
                break
            except OSError:
                await asyncio.sleep(0.1)
        await wait_for(url, lambda body: value(body, "tw_up") == 1, timeout=30)
        before = await snapshot(server.dsn, url)
        log(f"before: {before}")

        rounds = []
        for number in range(1, args.freezes + 1):
            last = value((await scrape(url))[0], "tw_exporter_query_last_success_timestamp_seconds",
                         query="top_users")  # fmt: skip
            server.freeze()
            frozen_at = time.monotonic()
            try:
                down, slowest = await wait_for(
                    url, lambda body: value(body, "tw_up") == 0, timeout=args.freeze_seconds
                )
                while time.monotonic() - frozen_at < args.freeze_seconds:
                    _, seconds = await scrape(url)
                    slowest = max(slowest, seconds)
                    await asyncio.sleep(0.1)
            finally:
                server.thaw()

            def fresh(body: str, last: float | None = last) -> bool:
                stamp = value(body, "tw_exporter_query_last_success_timestamp_seconds",
                              query="top_users")  # fmt: skip
                return value(body, "tw_up") == 1 and stamp != last

            up, slowest_after = await wait_for(url, fresh, timeout=30)
            rounds.append(
                {"down_s": round(down, 2), "up_s": round(up, 2),
                 "slowest_scrape_ms": round(1000 * max(slowest, slowest_after), 1)}
            )  # fmt: skip
            log(f"freeze {number}: tw_up 0 after {down:.2f}s, 1 again {up:.2f}s after thaw")

        after = await snapshot(server.dsn, url)
        log(f"after: {after}")
        body, _ = await scrape(url)
        errors = {
            reason: sum(
                value(body, "tw_exporter_query_errors_total", query=q, reason=reason) or 0
                for q in QUERY_NAMES
            )
            for reason in FAILURE_REASONS
        }
        skipped = total(body, "tw_exporter_cycles_skipped_total")  # summed over queries
        stop.set()
        await asyncio.wait_for(exporter, 10)
        return {
            "machine": machine(),
            "command": f"python -m benchmarks.freeze --freezes {args.freezes} "
            f"--freeze-seconds {args.freeze_seconds:g} --interval {args.interval:g} "
            f"--query-timeout {args.query_timeout:g}",
            "freezes": args.freezes,
            "freeze_seconds": args.freeze_seconds,
            "interval": args.interval,
            "query_timeout": args.query_timeout,
            "before": before,
            "after": after,
            "rounds": rounds,
            "errors": errors,
            "cycles_skipped": skipped,
        }
    finally:
        server.thaw()
        stop.set()
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def report(result: dict[str, Any]) -> str:
    before, after, rounds = result["before"], result["after"], result["rounds"]
    rows = [
        ("file descriptors", "fds"),
        ("RSS (MiB)", "rss_mib"),
        ("asyncio tasks", "tasks"),
        ("backends (`application_name='tw-exporter'`)", "backends"),
    ]
    lines = [
        "# Repeated freezes",
        "",
        f"`{result['command']}` on "
        + ", ".join(f"{key} {text}" for key, text in result["machine"].items())
        + ".",
        "",
        f"| after {result['freezes']} freezes of {result['freeze_seconds']:g} s | before | after "
        "| after - before |",
        "|---|---:|---:|---:|",
    ]
    for label, key in rows:
        delta = round(after[key] - before[key], 1)
        lines.append(f"| {label} | {before[key]} | {after[key]} | {delta:+g} |")
    lines += [
        "",
        "| per freeze (min / median / max) | seconds |",
        "|---|---:|",
        f"| freeze -> `tw_up 0` | {spread([r['down_s'] for r in rounds])} |",
        f"| thaw -> `tw_up 1` with fresh data | {spread([r['up_s'] for r in rounds])} |",
        f"| slowest scrape (ms) | {spread([r['slowest_scrape_ms'] for r in rounds])} |",
        "",
        f"Errors over the run: {result['errors']}; cycles skipped: {result['cycles_skipped']:g}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freezes", type=int, default=20)
    parser.add_argument("--freeze-seconds", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--query-timeout", type=float, default=1.0)
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "FREEZE.json").write_text(json.dumps(result, indent=1) + "\n")
    text = report(result)
    (RESULTS / "FREEZE.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
