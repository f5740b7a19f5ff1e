"""What the schema-dependent query shapes cost on the shipped (bigint, time-ordered ids) schema.

All numbers come from one run on one dataset (``exporter.ops.dataset``, 60 days of tweets, the
recommended indexes built), so every ratio compares like with like:

* the collection cycle as the exporter runs it now (the trending statement resolved per
  connection by ``exporter.collectors.schema``) against the same cycle with the statement fixed to
  the id-range SQL (what the exporter ran before the shapes existed): the cost of detection;
* trending_hashtags in its two shapes: why the id-range shape is kept where the schema allows it;
* top_users with the earlier partial index ``(follower_count DESC, username) WHERE
  follower_count IS NOT NULL`` against the current full ``(follower_count DESC, username
  COLLATE "C")`` one.

Usage: ``python -m benchmarks.schema_shapes [--tweets 1000000] [--repeat 15] [--keep]``. The
dataset lives in its own database (``tw_bench_shapes_<tweets>``), dropped at the end unless
``--keep``; the server is ``TW_BENCH_DSN`` (default: the local PostgreSQL service).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time

import asyncpg

from benchmarks.common import (
    ADMIN_DSN,
    create_recommended,
    dsn_for,
    log,
    median_time,
    open_pipeline,
)
from exporter.collectors import COLLECTORS, schema, top_users, trending_hashtags
from exporter.config.settings import query_params
from exporter.ops import advice, dataset

PARAMS = query_params()
OLD_TOP_INDEX = (
    "CREATE INDEX tw_users_top_followers_idx ON tw_users (follower_count DESC, username)"
    " WHERE follower_count IS NOT NULL"
)


async def build(name: str, tweets: int) -> str:
    """The dataset with the recommended indexes; one kept by ``--keep`` is reused as it is."""
    dsn = dsn_for(name)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        if await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            conn = await asyncpg.connect(dsn)
            try:
                if await conn.fetchval("SELECT count(*) FROM tw_tweets") == tweets:
                    await create_recommended(conn)
                    return dsn
            finally:
                await conn.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await dataset.create_schema(conn)
        await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=tweets), vacuum=True)
        await create_recommended(conn)
        took = time.perf_counter() - started
        log(f"dataset of {tweets:,} tweets and indexes built in {took:.0f}s")
    finally:
        await conn.close()
    return dsn


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def cycles(dsn: str, repeat: int) -> tuple[float, float]:
    """Median cycle with per-connection shapes vs with the id-range SQL fixed (interleaved, the
    order alternating, after one warm-up cycle each that also does the detection)."""
    fixed = tuple(
        dataclasses.replace(c, shapes={}) if c is trending_hashtags.COLLECTOR else c
        for c in COLLECTORS
    )
    timings: dict[str, list[float]] = {"shapes": [], "fixed": []}
    pipelines = {
        key: await open_pipeline(dsn, PARAMS, query_timeout=120.0, collectors=chosen)
        for key, chosen in (("shapes", COLLECTORS), ("fixed", fixed))
    }
    try:
        for pipeline in pipelines.values():
            await pipeline.run_all()
        order = list(pipelines)
        for _ in range(repeat):
            for key in order:
                timings[key].append(await median_time(pipelines[key].run_all, 1, warmup=0))
            order.reverse()
    finally:
        for pipeline in pipelines.values():
            await pipeline.close(5.0)
    return statistics.median(timings["shapes"]), statistics.median(timings["fixed"])


async def server_ms(conn: asyncpg.Connection, repeat: int) -> float:
    """Median ``Execution Time`` of top_users as EXPLAIN ANALYZE reports it, after a warm-up."""
    samples = []
    for _ in range(repeat + 2):
        top = await advice.explain(
            conn, top_users.SQL, top_users.COLLECTOR.params(PARAMS), analyze=True
        )
        samples.append(float(top["Execution Time"]))
    return statistics.median(samples[2:])


async def measure(dsn: str, repeat: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        ids = await schema.detect(conn)
        version = await conn.fetchval("SHOW server_version")
        in_window = await conn.fetchval(
            "SELECT count(*) FROM tw_tweets WHERE created_at >= now() - interval '7 days'"
        )
        users = await conn.fetchval("SELECT count(*) FROM tw_users")
        log(f"PostgreSQL {version}; {in_window:,} tweets in the 7-day window; {users:,} users")
        log(f"detected: {ids.describe()}")
        started = time.perf_counter()
        for _ in range(20):
            await schema.detect(conn)
        print(f"detection (catalog + 21-point sample): {ms((time.perf_counter() - started) / 20)}")

        shapes, fixed = await cycles(dsn, repeat)
        print(
            f"cycle, shape resolved per connection: {ms(shapes)}; id-range SQL fixed: "
            f"{ms(fixed)}; ratio {shapes / fixed:.2f}"
        )

        args = trending_hashtags.COLLECTOR.params(PARAMS)
        fast = await median_time(lambda: conn.fetch(trending_hashtags.SQL, *args), repeat, warmup=1)
        join = await median_time(
            lambda: conn.fetch(trending_hashtags.SQL_WINDOW_JOIN, *args), repeat, warmup=1
        )
        print(
            f"trending_hashtags: id-range {ms(fast)}, window-join {ms(join)}; "
            f"window-join / id-range {join / fast:.2f}"
        )

        # Sub-millisecond: the server's own execution time (EXPLAIN ANALYZE), not the round trip.
        new = await server_ms(conn, repeat * 4)
        await conn.execute("DROP INDEX tw_users_followers_rank_idx")
        await conn.execute(OLD_TOP_INDEX)
        await conn.execute("ANALYZE tw_users")
        old = await server_ms(conn, repeat * 4)
        await conn.execute("DROP INDEX tw_users_top_followers_idx")
        await create_recommended(conn)
        print(
            f'top_users (server execution time): new full COLLATE "C" index {new:.3f} ms, '
            f"earlier partial index {old:.3f} ms; new / earlier {new / old:.2f}"
        )
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"tw_bench_shapes_{args.tweets}"
    dsn = await build(name, args.tweets)
    try:
        await measure(dsn, args.repeat)
    finally:
        if not args.keep:
            admin = await asyncpg.connect(ADMIN_DSN)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
