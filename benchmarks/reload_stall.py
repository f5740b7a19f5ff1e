"""How long a reload holds the event loop (issue #21 point 6, issue #22).

A reload reads and validates the files in a worker thread, proves new and changed custom
queries on the database (async), and only swaps the result in on the event loop
(``exporter.collect.reload``). Two files, each reloaded into a running collector (the real
``Reloader``, scheduler and pool) on an empty database of its own:

* ``big``: 5 MB (a few queries and a long comment: what took 7 s of the loop before);
* ``many``: 2,000 new queries (5 s of the loop before).

Per file: the reload's wall time, the swap's time on the loop, and the event loop's worst
stall (a 5 ms ticker's worst lateness: what ``/healthz`` and ``/metrics`` would wait) before the
swap (read and prove) and over the whole reload (which includes the swap and the start of 2,000
new jobs).

``python -m benchmarks.reload_stall`` prints a JSON report and writes
``results/RELOAD_STALL.{json,md}``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import RESULTS, create_database, drop_database, log

DATABASE = "tw_bench_reload_stall"
OFF = (
    "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
    "platform_stats: {enabled: false}}\n"
)
START = (
    OFF + "queries:\n  a: {sql: 'SELECT 1 AS tw_a', interval: 600, metrics: {tw_a: {help: h}}}\n"
)


def big_file(megabytes: int = 5) -> str:
    comment = ("# " + "x" * 98 + "\n") * (megabytes * 10_000)
    return (
        START
        + "  b: {sql: 'SELECT 2 AS tw_b', interval: 600, metrics: {tw_b: {help: h}}}\n"
        + comment
    )


def many_file(queries: int = 2000) -> str:
    return (
        OFF
        + "queries:\n"
        + "".join(
            f"  q{i}: {{sql: 'SELECT {i} AS tw_q{i}', interval: 600, "
            f"metrics: {{tw_q{i}: {{help: 'help text {i}'}}}}}}\n"
            for i in range(queries)
        )
    )


async def measure(dsn: str, text: str) -> dict[str, Any]:
    from exporter.config.queries_file import load
    from exporter.config.settings import query_params
    from exporter.pipeline import build_pipeline

    directory = Path(tempfile.mkdtemp(prefix="tw-reload-stall-"))
    path = directory / "queries.yml"
    path.write_text(START)
    settings = query_params(queries_file=path, dsn=dsn)
    # The exporter's pipeline, started as ``run`` starts it.
    pipeline = build_pipeline(settings, load(path, settings), process_metrics=False)
    await pipeline.open()
    scheduler, reloader = pipeline.start()
    database, collector = pipeline.database, pipeline.collector
    loop = asyncio.get_running_loop()
    stamps: list[tuple[float, float]] = []
    done = asyncio.Event()
    swap: dict[str, float] = {}
    apply = reloader._apply

    def timed_apply(plan: Any) -> str:
        swap["at"] = loop.time()
        started = time.perf_counter()
        result = apply(plan)
        swap["seconds"] = time.perf_counter() - started
        return result

    reloader._apply = timed_apply  # type: ignore[method-assign]

    async def tick() -> None:
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            stamps.append((before, loop.time() - before - 0.005))

    try:
        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.1)
        path.write_text(text)
        started = loop.time()
        outcome = await reloader.reload()
        took = loop.time() - started
        done.set()
        await ticker
    finally:
        scheduler.shutdown(wait=False)
        await collector.cancel_running(1.0)
        await database.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert outcome.ok, outcome.line
    before_swap = [lag for at, lag in stamps if at + lag < swap["at"] and at >= started]
    during = [lag for at, lag in stamps if at >= started]
    return {
        "bytes": len(text),
        "line": outcome.line,
        "reload_seconds": round(took, 2),
        "swap_ms": round(swap["seconds"] * 1000, 1),
        "worst_stall_before_swap_ms": round(max(before_swap) * 1000, 1),
        "worst_stall_ms": round(max(during) * 1000, 1),
    }


async def run() -> dict[str, Any]:
    dsn = await create_database(DATABASE)
    try:
        report = {}
        for name, text in (("big", big_file()), ("many", many_file())):
            log(f"reloading {name}")
            report[name] = await measure(dsn, text)
        return report
    finally:
        await drop_database(DATABASE)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# How long a reload holds the event loop (issues #21, #22)",
        "",
        f"`python -m benchmarks.reload_stall` on {report['machine']}: the real `Reloader` of a "
        "running collector; a 5 ms ticker measures the event loop's worst stall.",
        "",
        "| file | size | reload (s) | worst stall while reading and proving (ms) | swap on the "
        "loop (ms) | worst stall over the whole reload (ms) | outcome |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"big": "5 MB (2 queries and a comment)", "many": "2,000 new queries"}
    for name, label in labels.items():
        r = report[name]
        lines.append(
            f"| {label} | {r['bytes'] / 1e6:.1f} MB | {r['reload_seconds']} | "
            f"{r['worst_stall_before_swap_ms']} | {r['swap_ms']} | {r['worst_stall_ms']} | "
            f"{r['line']} |"
        )
    lines += [
        "",
        "Before (issue #21): the whole reload ran on the event loop: 7 s unanswered for a 5 MB "
        "file, 5 s for 2,000 queries. The stall over the whole reload includes the swap and, "
        "for 2,000 new queries, APScheduler starting their first runs at once.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    report = asyncio.run(run())
    report["machine"] = (
        f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB"
    )
    print(json.dumps(report, indent=2))
    (RESULTS / "RELOAD_STALL.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "RELOAD_STALL.md").write_text(markdown(report))


if __name__ == "__main__":
    main()
