"""``max_series`` bounds memory (issue #22): a custom query over 2 million rows with
``max_series: 100``, run 10 times through the scheduler's own path (``Collector.run_query``).

Two modes, each in a fresh process of its own (so one's heap cannot hide the other's), with the
mmap threshold fixed as ``tw-exporter run`` fixes it (``exporter.allocator``):

* ``capped``: as shipped: the rows are streamed and reading stops at ``max_series + 1``;
* ``all``: the same query read whole, then cut to ``max_series`` (what the exporter did before:
  the collector's ``max_rows`` set to None).

Per mode: RSS before the first run and after each run (psutil), the peak RSS (the kernel's
high-water mark, ``ru_maxrss``: what a memory limit meets, even when the rows are freed after
the run), each run's query time (the query's duration histogram: acquire, transaction, rows
read; not the render that follows), and the event loop's longest stall during the runs (a 1 ms
ticker's worst lateness: what ``/healthz`` and ``/metrics`` would have waited).

``python -m benchmarks.max_series [--rows 2000000] [--runs 10] [--all-runs 3]`` prints a JSON
report and writes ``results/MAX_SERIES.{json,md}``. The table ``tw_bench_rows`` lives in its own
database ``tw_bench_max_series`` on ``TW_BENCH_DSN``, created once and reused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
from typing import Any

import asyncpg
import psutil

from benchmarks.common import RESULTS, create_database, log

DATABASE = "tw_bench_max_series"
MAX_SERIES = 100
MIB = 1024 * 1024


def queries_file() -> str:
    return (
        "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
        "platform_stats: {enabled: false}}\n"
        "queries:\n"
        "  wide:\n"
        "    sql: SELECT k, v AS tw_bench_wide FROM tw_bench_rows\n"
        f"    max_series: {MAX_SERIES}\n"
        "    timeout: 60\n"
        "    interval: 120\n"
        "    metrics: {tw_bench_wide: {help: h, labels: [k]}}\n"
    )


async def ensure_rows(rows: int) -> str:
    """The benchmark's database with ``rows`` rows (created once; recreated if the count
    differs)."""
    dsn = await create_database(DATABASE, fresh=False)
    conn = await asyncpg.connect(dsn)
    try:
        have = -1
        if await conn.fetchval("SELECT to_regclass('tw_bench_rows') IS NOT NULL"):
            have = await conn.fetchval("SELECT count(*) FROM tw_bench_rows")
        if have != rows:
            log(f"creating tw_bench_rows with {rows} rows")
            await conn.execute("DROP TABLE IF EXISTS tw_bench_rows")
            await conn.execute(
                "CREATE TABLE tw_bench_rows AS SELECT 'key-' || g AS k, g AS v "
                f"FROM generate_series(1, {rows}) g"
            )
            await conn.execute("VACUUM ANALYZE tw_bench_rows")
    finally:
        await conn.close()
    return dsn


async def measure(dsn: str, mode: str, runs: int) -> dict[str, Any]:
    """One mode, in this process: ``runs`` runs of the query, RSS and times."""
    from exporter.allocator import pin_mmap_threshold
    from exporter.collect.custom import collectors_for
    from exporter.config.queries_file import parse
    from exporter.config.settings import query_params
    from exporter.pipeline import build_pipeline

    pin_mmap_threshold()
    settings = query_params()
    config = parse(queries_file(), settings)
    collectors = collectors_for(config)
    if mode == "all":
        collectors = tuple(dataclasses.replace(c, max_rows=None) for c in collectors)
    pipeline = build_pipeline(
        dataclasses.replace(settings, dsn=dsn, max_connections=1, query_timeout=60),
        config,
        collectors=collectors,
        process_metrics=False,
    )
    await pipeline.open()
    database, store, collector = pipeline.database, pipeline.store, pipeline.collector
    process = psutil.Process()
    loop = asyncio.get_running_loop()
    worst = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    try:
        # A first trivial round trip so connecting is not part of the first run.
        await database.fetch("SELECT 1", [])
        rss = [process.memory_info().rss / MIB]
        peak = [peak_mib()]
        seconds = []
        duration = store.health.query_duration.labels(query="wide")
        ticking = asyncio.create_task(ticker())
        for _ in range(runs):
            before = duration._sum.get()
            assert await collector.run_query("wide") is True
            seconds.append(duration._sum.get() - before)
            rss.append(process.memory_info().rss / MIB)
            peak.append(peak_mib())
        stop.set()
        await ticking
        served = store.current.text.body.decode().count("tw_bench_wide{")
        data_errors = store.health.query_errors.labels(query="wide", reason="data")._value.get()
    finally:
        await database.close()
    return {
        "mode": mode,
        "runs": runs,
        "rss_mib": [round(r, 1) for r in rss],
        "rss_growth_mib": round(max(rss) - rss[0], 1),
        "peak_rss_mib": [round(r, 1) for r in peak],
        "peak_rss_growth_mib": round(max(peak) - peak[0], 1),
        "seconds": [round(s, 3) for s in seconds],
        "median_seconds": round(statistics.median(seconds), 3),
        "worst_loop_stall_ms": round(worst * 1000, 1),
        "series_served": served,
        "data_errors": data_errors,
    }


def peak_mib() -> float:
    """The process's peak RSS so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_subprocess(dsn: str, mode: str, runs: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.max_series",
            "--child",
            mode,
            "--dsn",
            dsn,
            "--runs",
            str(runs),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def markdown(report: dict[str, Any]) -> str:
    capped, whole = report["capped"], report["all"]
    lines = [
        "# max_series bounds memory (issue #22)",
        "",
        f"`python -m benchmarks.max_series --rows {report['rows']} --runs {capped['runs']} "
        f"--all-runs {whole['runs']}` on {report['machine']}: a custom query over "
        f"{report['rows']:,} rows with `max_series: {MAX_SERIES}`, run through "
        "`Collector.run_query`, each mode in a fresh process (mmap threshold fixed as `run` "
        "does).",
        "",
        "| mode | runs | RSS before (MiB) | RSS after each run (MiB) | RSS growth (MiB) | "
        "peak RSS growth (MiB) | median query time (s) | worst event-loop stall (ms) | "
        "series served | data errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in (
        ("streamed, stops at max_series + 1 (shipped)", capped),
        ("read whole, then cut (before)", whole),
    ):
        lines.append(
            f"| {label} | {r['runs']} | {r['rss_mib'][0]} | "
            f"{', '.join(str(x) for x in r['rss_mib'][1:])} | {r['rss_growth_mib']} | "
            f"{r['peak_rss_growth_mib']} | {r['median_seconds']} | "
            f"{r['worst_loop_stall_ms']} | {r['series_served']} | "
            f"{r['data_errors']:g} |"
        )
    ratio = whole["median_seconds"] / capped["median_seconds"]
    lines += [
        "",
        f"Reading it all took {ratio:.0f}x as long per run as stopping at the cap "
        f"({whole['median_seconds']} s against {capped['median_seconds']} s); its peak RSS "
        f"grew {whole['peak_rss_growth_mib']} MiB against {capped['peak_rss_growth_mib']} MiB "
        f"(RSS after the runs: {whole['rss_growth_mib']} against {capped['rss_growth_mib']} "
        "MiB), and it stalled the event loop (scrapes and probes) for "
        f"{whole['worst_loop_stall_ms']} ms against {capped['worst_loop_stall_ms']} ms.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--all-runs", type=int, default=3)
    parser.add_argument("--child", choices=("capped", "all"))
    parser.add_argument("--dsn")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.dsn, args.child, args.runs))))
        return
    dsn = asyncio.run(ensure_rows(args.rows))
    log(f"capped: {args.runs} runs")
    capped = in_subprocess(dsn, "capped", args.runs)
    log(f"all: {args.all_runs} runs")
    whole = in_subprocess(dsn, "all", args.all_runs)
    report = {
        "rows": args.rows,
        "machine": f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB",
        "capped": capped,
        "all": whole,
    }
    print(json.dumps(report, indent=2))
    (RESULTS / "MAX_SERIES.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "MAX_SERIES.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
