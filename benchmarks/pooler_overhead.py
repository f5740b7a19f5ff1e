"""Per-query cost of the pooler-safe transaction setup, before/after, on a direct connection.

Issue #11 moved the timeouts from startup parameters into each transaction (``BEGIN READ ONLY;
SET LOCAL ...`` in one round trip), made statements unnamed (``statement_cache_size=0``: one
more round trip per query, Parse/Describe then Bind/Execute) and dropped the pool's reset
query on release (one round trip less). This measures what that costs per query, on the same
datasets and in the same run: ``old`` is ``exporter/db/database.py`` as of a git revision
(default ``main``, read with ``git show``), ``new`` is the working tree's. The two ``Database``
objects alternate call by call (ABAB...), so drift in a machine shared with other work hits
both alike; each figure is the median of ``--repeat`` calls.

    python -m benchmarks.pooler_overhead --scales 100k,1m --repeat 200

Datasets go to their own databases (``tw_bench_pooler_<scale>``, generated once and reused),
with the recommended indexes (``--plain`` measures without them too). On the first scale it
also times a trivial statement (``SELECT $1``): the per-query overhead with nothing to read.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg

from benchmarks.common import ROOT, create_recommended, drop_recommended, ensure_dataset, log
from exporter.collectors import COLLECTORS
from exporter.config.settings import query_params
from exporter.db import database as new_database

QUERY_TIMEOUT = 120.0
PARAMS = query_params()


def load_old(revision: str) -> ModuleType:
    """``exporter/db/database.py`` at ``revision``, imported under another module name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:exporter/db/database.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="tw-old-db-")) / "old_database.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_database", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_database"] = module
    spec.loader.exec_module(module)
    return module


# The exporter's fixed cost per query (round trips, transaction, pool), with no table to read.
FIXED_COST_SQL = "SELECT $1::int AS n"


async def compare(
    dsn: str, old: ModuleType, repeat: int, fixed_repeat: int = 0
) -> dict[str, dict[str, float]]:
    """Median seconds per query for old and new, measured alternately; with ``fixed_repeat``
    also a trivial statement (the per-query overhead alone)."""
    dbs = {
        "old": old.Database(dsn, pool_size=len(COLLECTORS), query_timeout=QUERY_TIMEOUT),
        "new": new_database.Database(dsn, pool_size=len(COLLECTORS), query_timeout=QUERY_TIMEOUT),
    }
    for db in dbs.values():
        await db.open()
    result: dict[str, dict[str, float]] = {}
    jobs: list[tuple[str, str, tuple[Any, ...], int]] = [
        (c.name, c.sql, c.params(PARAMS), repeat) for c in COLLECTORS
    ]
    if fixed_repeat:
        jobs.append(("fixed cost (SELECT $1)", FIXED_COST_SQL, (1,), fixed_repeat))
    try:
        for name, sql, args, count in jobs:
            samples: dict[str, list[float]] = {"old": [], "new": []}
            for db in dbs.values():  # warm-up: connections, plans, caches
                for _ in range(3):
                    await db.fetch(sql, args)
            for i in range(count):
                order = ("old", "new") if i % 2 == 0 else ("new", "old")
                for which in order:
                    started = time.perf_counter()
                    await dbs[which].fetch(sql, args)
                    samples[which].append(time.perf_counter() - started)
            result[name] = {k: statistics.median(v) for k, v in samples.items()}
    finally:
        for db in dbs.values():
            await db.close()
    return result


def report(scale: str, state: str, result: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    queries = {c.name for c in COLLECTORS}
    old_total = sum(r["old"] for n, r in result.items() if n in queries)
    new_total = sum(r["new"] for n, r in result.items() if n in queries)
    rows = [(n, r) for n, r in result.items() if n in queries]
    rows.append(("all three (sum)", {"old": old_total, "new": new_total}))
    rows += [(n, r) for n, r in result.items() if n not in queries]
    for name, r in rows:
        line = (
            f"| {scale} | {state} | {name} | {r['old'] * 1000:.3f} | {r['new'] * 1000:.3f} | "
            f"{(r['new'] - r['old']) * 1000:+.3f} | {r['new'] / r['old']:.3f} |"
        )
        lines.append(line)
        log(line)
    return lines


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="100k,1m")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--revision", default="main", help="git revision of the old code")
    parser.add_argument("--plain", action="store_true", help="also without the indexes")
    parser.add_argument(
        "--fixed-repeat", type=int, default=2000, help="calls of the trivial statement"
    )
    args = parser.parse_args(argv)
    old = load_old(args.revision)
    lines = [
        f"old = {args.revision}:exporter/db/database.py, new = working tree; median of "
        f"{args.repeat} alternating calls per query",
        "",
        "| scale | indexes | query | old ms | new ms | new - old ms | new / old |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, scale in enumerate(args.scales.split(",")):
        dsn = await ensure_dataset(scale, database=f"tw_bench_pooler_{scale}")
        conn = await asyncpg.connect(dsn)
        try:
            states: list[tuple[str, Any]] = [("recommended", create_recommended)]
            if args.plain:
                states.append(("none", drop_recommended))
            for state, prepare in states:
                await prepare(conn)
                fixed = args.fixed_repeat if index == 0 and state == "recommended" else 0
                lines += report(scale, state, await compare(dsn, old, args.repeat, fixed))
        finally:
            await conn.close()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
