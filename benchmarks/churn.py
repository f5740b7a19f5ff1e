"""What an outdated visibility map costs: index-only scans need VACUUM to keep up.

    python -m benchmarks.churn [--scale 10m] [--fraction 0.2]

Updates ``like_count`` of a fraction of the window's tweets (as likes on recent tweets do on a
live platform) with autovacuum off for the table, measures the cycle, VACUUMs, measures again.
Not part of ``run_all``: it ages the dataset (dead tuples, index bloat).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

from benchmarks.common import db_name, dsn_for, ensure_dataset, median_time, open_pipeline
from benchmarks.db_cycle import PARAMS, QUERY_TIMEOUT
from exporter.collectors import COLLECTORS


async def cycle(dsn: str, label: str) -> None:
    pipeline = await open_pipeline(dsn, PARAMS, query_timeout=QUERY_TIMEOUT)
    database = pipeline.database
    try:
        per = {
            c.name: await median_time(lambda c=c: database.fetch(c.sql, c.params(PARAMS)), 3)
            for c in COLLECTORS
        }
        total = await median_time(pipeline.run_all, 3)
    finally:
        await pipeline.close(5.0)
    queries = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in per.items())
    print(f"{label}: cycle {total * 1000:.0f} ms ({queries})", flush=True)


async def main(scale: str, fraction: float) -> None:
    await ensure_dataset(scale)
    dsn = dsn_for(db_name(scale))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ALTER TABLE tw_tweets SET (autovacuum_enabled = off)")
        await conn.execute("VACUUM (ANALYZE) tw_tweets")
        await cycle(dsn, "vacuumed")
        every = max(1, round(1 / fraction))
        started = time.perf_counter()
        status = await conn.execute(
            "UPDATE tw_tweets SET like_count = like_count + 1"
            " WHERE created_at >= now() - interval '7 days' AND id % $1 = 0",
            every,
        )
        print(f"{status} in {time.perf_counter() - started:.1f} s", flush=True)
        await conn.execute("ANALYZE tw_tweets")
        await cycle(dsn, f"{fraction:.0%} of the window's rows updated, not vacuumed yet")
        started = time.perf_counter()
        await conn.execute("VACUUM tw_tweets")
        print(f"VACUUM in {time.perf_counter() - started:.1f} s", flush=True)
        await cycle(dsn, "after VACUUM")
    finally:
        await conn.execute("ALTER TABLE tw_tweets RESET (autovacuum_enabled)")
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", default="10m")
    parser.add_argument("--fraction", type=float, default=0.2)
    args = parser.parse_args()
    asyncio.run(main(args.scale, args.fraction))
