"""DB cost per collection cycle, per scale, without and with the recommended indexes.

For each scale and index state it measures, in one run and on the same connection settings:

* ``seed``: the seed dashboard's original three statements (the "before" numbers);
* ``bare``: the exporter's three statements through a bare ``asyncpg`` pool (``conn.fetch``);
* ``exporter``: the same statements through ``exporter.db.database.Database`` (read-only
  transaction, timeouts, error classification) and a full cycle, ``Pipeline.run_all``: every
  query's scheduled job function at once (row -> metric mapping, snapshot render), built by
  ``exporter.pipeline`` as ``run`` builds it;
* sequential vs concurrent: the bare statements one after another vs ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from benchmarks.common import (
    create_recommended,
    drop_recommended,
    ensure_dataset,
    log,
    median_time,
    open_pipeline,
)
from exporter.collectors import COLLECTORS, seed
from exporter.config.settings import query_params

SEED_SQL: dict[str, tuple[str, tuple[Any, ...]]] = {
    "top_users": (seed.TOP_USERS, (10,)),
    "trending_hashtags": (seed.TRENDING_HASHTAGS, ("7",)),
    "platform_stats": (seed.PLATFORM_STATS, ()),
}


PARAMS = query_params()
QUERY_TIMEOUT = 120.0


async def measure_state(dsn: str, repeat: int) -> dict[str, Any]:
    """Every measurement for one database in its current index state."""
    result: dict[str, Any] = {"seed": {}, "bare": {}, "exporter": {}}
    pool = await asyncpg.create_pool(dsn, min_size=3, max_size=3)
    pipeline = await open_pipeline(dsn, PARAMS, query_timeout=QUERY_TIMEOUT)
    database, store = pipeline.database, pipeline.store
    try:
        async with pool.acquire() as conn:
            for name, (sql, args) in SEED_SQL.items():
                result["seed"][name] = await median_time(
                    lambda s=sql, a=args: conn.fetch(s, *a), repeat
                )
            for c in COLLECTORS:
                args = c.params(PARAMS)
                result["bare"][c.name] = await median_time(
                    lambda s=c.sql, a=args: conn.fetch(s, *a), repeat
                )
        for c in COLLECTORS:
            args = c.params(PARAMS)
            result["exporter"][c.name] = await median_time(
                lambda s=c.sql, a=args: database.fetch(s, a), repeat
            )

        async def bare_one(sql: str, args: tuple[Any, ...]) -> None:
            async with pool.acquire() as conn:
                await conn.fetch(sql, *args)

        async def bare_concurrent() -> None:
            await asyncio.gather(*(bare_one(c.sql, c.params(PARAMS)) for c in COLLECTORS))

        async def bare_sequential() -> None:
            for c in COLLECTORS:
                await bare_one(c.sql, c.params(PARAMS))

        async def seed_concurrent() -> None:
            await asyncio.gather(*(bare_one(s, a) for s, a in SEED_SQL.values()))

        async def exporter_cycle() -> None:
            started = time.perf_counter()
            reached = await pipeline.run_all()
            assert reached and store.ready, "cycle failed"
            result.setdefault("_cycle_samples", []).append(time.perf_counter() - started)

        result["cycle"] = {
            "exporter": await median_time(exporter_cycle, repeat),
            "bare_concurrent": await median_time(bare_concurrent, repeat),
            "bare_sequential": await median_time(bare_sequential, repeat),
            "seed_concurrent": await median_time(seed_concurrent, max(1, repeat // 2)),
        }
        result.pop("_cycle_samples", None)
    finally:
        await pipeline.close(5.0)
        await pool.close()
    return result


async def window_sweep(scale: str, days: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    """Cycle time for several window lengths on one table (recommended indexes present):
    cost should follow the rows inside the window, not the table's size."""
    dsn = await ensure_dataset(scale)
    rows: list[dict[str, Any]] = []
    conn = await asyncpg.connect(dsn)
    try:
        await create_recommended(conn)
        tweets = await conn.fetchval("SELECT count(*) FROM tw_tweets")
        for d in days:
            in_window = await conn.fetchval(
                "SELECT count(*) FROM tw_tweets"
                " WHERE created_at >= now() - make_interval(days => $1)",
                d,
            )
            params = query_params(trending_days=d, stats_days=d)
            pipeline = await open_pipeline(dsn, params, query_timeout=QUERY_TIMEOUT)
            try:
                cycle = await median_time(pipeline.run_all, repeat)
            finally:
                await pipeline.close(5.0)
            rows.append({"scale": scale, "tweets": tweets, "days": d, "in_window": in_window,
                         "cycle": cycle})  # fmt: skip
            log(f"[{scale}] window {d}d: {in_window:,} tweets, cycle {cycle * 1000:.0f} ms")
    finally:
        await conn.close()
    return rows


async def run_scale(scale: str, repeat: int) -> dict[str, Any]:
    dsn = await ensure_dataset(scale)
    out: dict[str, Any] = {"scale": scale}
    conn = await asyncpg.connect(dsn)
    try:
        out["tweets"] = await conn.fetchval("SELECT count(*) FROM tw_tweets")
        out["in_window"] = await conn.fetchval(
            "SELECT count(*) FROM tw_tweets WHERE created_at >= now() - interval '7 days'"
        )
        out["links"] = await conn.fetchval("SELECT count(*) FROM tw_tweet_hashtags")
        out["users"] = await conn.fetchval("SELECT count(*) FROM tw_users")
        log(f"[{scale}] plain schema (primary keys and unique constraints only)")
        await drop_recommended(conn)
        await conn.execute("VACUUM (ANALYZE) tw_tweets, tw_tweet_hashtags, tw_users, tw_hashtags")
        out["plain"] = await measure_state(dsn, repeat)
        log(f"[{scale}]   {summary(out['plain'])}")
        log(f"[{scale}] with exporter/sql/recommended-indexes.sql")
        out["index_build_seconds"] = await create_recommended(conn)
        out["indexed"] = await measure_state(dsn, repeat)
        log(f"[{scale}]   {summary(out['indexed'])}")
    finally:
        await conn.close()
    return out


def summary(state: dict[str, Any]) -> str:
    q = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in state["exporter"].items())
    c = state["cycle"]
    cycle = {k: f"{v * 1000:.1f} ms" for k, v in c.items()}
    return (
        f"{q}; cycle {cycle['exporter']} (bare pool {cycle['bare_concurrent']}, "
        f"sequential {cycle['bare_sequential']}, seed {cycle['seed_concurrent']})"
    )
