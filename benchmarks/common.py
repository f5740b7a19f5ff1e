"""Shared helpers: datasets per scale, the index sets, timing, the machine description."""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from exporter.collectors.base import QueryCollector
from exporter.config.settings import Settings, query_params
from exporter.ops import dataset
from exporter.ops.schema_file import SQL_DIR
from exporter.pipeline import Pipeline, build_pipeline

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RECOMMENDED_SQL = SQL_DIR / "recommended-indexes.sql"

ADMIN_DSN = os.environ.get("TW_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

SCALES: dict[str, int] = {"100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def dsn_for(database: str, admin: str = ADMIN_DSN) -> str:
    parts = urlsplit(admin)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


def db_name(scale: str) -> str:
    return f"tw_bench_{scale}"


async def create_database(name: str, *, fresh: bool = True) -> str:
    """Create the database ``name`` beside ``ADMIN_DSN`` and return its DSN. ``fresh`` drops
    it first, so a run starts from nothing; otherwise one that exists is kept, data and all,
    for a run that reuses what an earlier one built."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        if fresh:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return dsn_for(name)


async def schema_database(name: str, rows: str) -> str:
    """A fresh database ``name`` with the shipped schema and the few ``rows`` (INSERT
    statements) a run needs; its DSN."""
    dsn = await create_database(name)
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
        await conn.execute(rows)
    finally:
        await conn.close()
    return dsn


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def ensure_dataset(scale: str, *, rebuild: bool = False, database: str | None = None) -> str:
    """Create ``tw_bench_<scale>`` (or ``database``) with the shared generator unless it already
    holds the data."""
    name, tweets = database or db_name(scale), SCALES[scale]
    dsn = await create_database(name, fresh=rebuild)
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
        count = await conn.fetchval("SELECT count(*) FROM tw_tweets")
        if count != tweets:
            log(f"[{scale}] generating {tweets:,} tweets ...")
            started = time.perf_counter()
            await dataset.reset_schema(conn)
            await dataset.create_schema(conn)
            await dataset.load_dataset(
                conn,
                dataset.DatasetSpec(tweets=tweets),
                progress=lambda done, total: log(f"[{scale}]   {done:,}/{total:,}"),
            )
            await conn.execute("VACUUM (ANALYZE) tw_tweets, tw_tweet_hashtags, tw_users")
            log(f"[{scale}] generated in {time.perf_counter() - started:.0f}s")
    finally:
        await conn.close()
    return dsn


async def drop_dataset(scale: str) -> None:
    await drop_database(db_name(scale))


# ------------------------------------------------------------------ indexes


def recommended_statements() -> list[tuple[str, str]]:
    """(index name, CREATE INDEX statement) for every index in the recommended-indexes file."""
    text = RECOMMENDED_SQL.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    result = []
    for statement in body.split(";"):
        statement = " ".join(statement.split())
        match = re.search(r"IF NOT EXISTS (\w+)", statement)
        if match:
            result.append((match.group(1), statement))
    return result


async def drop_recommended(conn: asyncpg.Connection) -> None:
    for name, _ in recommended_statements():
        await conn.execute(f"DROP INDEX IF EXISTS {name}")


async def create_recommended(conn: asyncpg.Connection) -> dict[str, float]:
    """Create the recommended indexes; returns seconds per index (0 when it already existed)."""
    took: dict[str, float] = {}
    for name, statement in recommended_statements():
        started = time.perf_counter()
        await conn.execute(statement)
        took[name] = time.perf_counter() - started
    await conn.execute("VACUUM (ANALYZE) tw_tweets, tw_tweet_hashtags, tw_users, tw_hashtags")
    return took


# ------------------------------------------------------------------ timing


async def median_time(fn: Callable[[], Awaitable[object]], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": nproc, "cpu": cpu, "memory": mem, "python": platform.python_version()}


async def pg_description(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            r["name"]: r["setting"] + (r["unit"] or "")
            for r in await conn.fetch(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
                ["shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit"],
            )
        }
    finally:
        await conn.close()
    extra = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
    return f"PostgreSQL {version} ({extra})"


async def open_pipeline(
    dsn: str,
    params: Settings | None = None,
    *,
    query_timeout: float,
    max_staleness: float = 3600.0,
    interval: float = 3600.0,
    collectors: Sequence[QueryCollector] | None = None,
    process_metrics: bool = True,
) -> Pipeline:
    """The exporter's pipeline as ``run`` builds it (``exporter.pipeline``), opened;
    ``run_all`` runs every query's scheduled job function once. Each run renders as soon as
    it finishes (``render_gap`` 0): a timed cycle is its queries and renders, not the wait
    that spaces renders out in production. Nothing is scheduled: ``interval`` only bounds the
    queries' timeout (a timeout is at most the interval), so it is long by default."""
    given = {"dsn": dsn, "query_timeout": query_timeout, "max_staleness": max_staleness}
    settings = dataclasses.replace(
        params or query_params(),
        interval=interval,
        **given,
        sources={**(params.sources if params else {}), **dict.fromkeys(given, "given")},
    )
    pipeline = build_pipeline(settings, collectors=collectors, process_metrics=process_metrics)
    pipeline.collector.render_gap = 0.0
    await pipeline.open()
    return pipeline
