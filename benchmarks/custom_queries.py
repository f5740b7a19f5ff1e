"""Custom queries at scale (issue #12): 50 queries x 100 series on the 1M dataset.

Measures, in one run on one machine:

1. **Burst**: all 50 queries start together (as at start-up); the event loop's longest stall
   while they finish (a 1 ms ticker's worst lateness), the time until all have a result, RSS.
2. **Render cost per query run**: ``SnapshotStore.render`` after one query's new result (its part
   plus the health section) against re-rendering every part (what rendering the whole
   exposition per run would cost); sizes of the exposition.
3. **Scrape throughput**: ``wrk`` on the real ``tw-exporter run --queries-file`` vs nginx (one
   worker) serving the same bytes from a file, plain and gzip, side by side; ratio = exporter /
   nginx.
4. **Fast beside slow**: a 1 s query beside a 30 s query that takes 3 s, then beside five such
   slow queries (as many as the pool's five connections), each with the pool's fairness rule
   (``exporter.db.database.Slots``) and without it (first come, first served, through the rule's
   private switch), in the same run: gaps between the fast query's successes, its skipped
   ticks, connection errors, and the most server backends the exporter had at once.

``python -m benchmarks.custom_queries [--scale 1m] [--seconds 10]`` prints a JSON report and
writes ``results/CUSTOM_QUERIES.json`` and ``results/CUSTOM_QUERIES.md``.
``python -m benchmarks.custom_queries --only fairness [--window 35]`` runs part 4 alone (it needs
no dataset) and writes ``results/POOL_FAIRNESS.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.common import ADMIN_DSN, RESULTS, ensure_dataset, log
from benchmarks.scrape import Server, free_port, get, measure_wrk, start, wait_for
from exporter.collect.scheduler import Collector, start_scheduler
from exporter.config.queries_file import QueriesConfig, parse
from exporter.config.settings import query_params
from exporter.db.database import MAX_POOL_SIZE, Database
from exporter.expose.snapshot import SnapshotStore
from exporter.pipeline import build_pipeline

QUERIES = 50
SERIES = 100
OFF = "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
OFF += "platform_stats: {enabled: false}}\n"


def queries_file(queries: int = QUERIES, series: int = SERIES, builtins: bool = False) -> str:
    """``queries`` custom queries, each exporting ``series`` users' follower counts."""
    lines = ["" if builtins else OFF, "queries:"]
    for i in range(queries):
        lines.append(
            f"  q{i:02d}:\n"
            f"    interval: 15s\n"
            f"    sql: SELECT username, coalesce(follower_count, 0) AS followers FROM tw_users\n"
            f"         WHERE id > $1 ORDER BY id LIMIT $2\n"
            f"    params: [{i * series}, {series}]\n"
            f"    max_series: {series}\n"
            f"    metrics:\n"
            f"      tw_bench_q{i:02d}_followers:\n"
            f"        help: Followers of {series} users (benchmark query {i}).\n"
            f"        value: followers\n"
            f"        labels: [username]"
        )
    return "\n".join(lines) + "\n"


async def rig(dsn: str, config: QueriesConfig) -> tuple[Database, SnapshotStore, Collector]:
    """The exporter's pipeline on ``config``, as ``run`` builds it, opened."""
    settings = query_params(dsn=dsn, query_timeout=10.0, max_staleness=3600.0)
    pipeline = build_pipeline(settings, config)
    await pipeline.open()
    return pipeline.database, pipeline.store, pipeline.collector


async def worst_stall(work: Any, settle: float = 0.3) -> tuple[float, float]:
    """(seconds ``work`` took, the worst lateness of a 1 ms ticker meanwhile, in seconds)."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            worst = max(worst, loop.time() - before - 0.001)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await work()
    took = time.perf_counter() - started
    await asyncio.sleep(settle)  # the render after the last result
    done.set()
    await ticking
    return took, worst


async def burst_and_render(dsn: str) -> dict[str, Any]:
    config = parse(queries_file(), query_params())
    database, store, collector = await rig(dsn, config)
    names = list(config.custom)

    async def idle() -> None:
        await asyncio.sleep(3.0)

    # The machine is shared: the ticker's lateness with nothing to do is the floor.
    _, idle_worst = await worst_stall(idle, settle=0)
    scheduler = start_scheduler(collector)  # the first runs, at start-up
    while len(collector.runs_completed) < QUERIES:  # noqa: ASYNC110 - the jobs bump a counter
        await asyncio.sleep(0.005)
    scheduler.shutdown(wait=False)

    async def burst() -> None:  # all 50 queries finishing together, as their jobs do
        await collector.run_all()

    all_done, worst = await worst_stall(burst)
    rss = psutil.Process().memory_info().rss / 2**20

    # Render cost: one query's new result vs every part again.
    incremental, full = [], []
    names = list(store.queries)
    for _ in range(3):
        for name in names:
            state = store.queries[name]
            store.record_success(name, state.families, time.time())
            t = time.perf_counter()
            store.render()
            incremental.append(time.perf_counter() - t)
        for _ in range(5):
            for state in store.queries.values():
                state.part = None
            t = time.perf_counter()
            store.render()
            full.append(time.perf_counter() - t)
    body = store.current.text.body
    await database.close()
    return {
        "queries": QUERIES,
        "series_per_query": SERIES,
        "business_series": sum(1 for line in body.splitlines() if line.startswith(b"tw_bench_")),
        "burst_all_done_s": all_done,
        "burst_worst_loop_stall_ms": worst * 1e3,
        "idle_worst_loop_stall_ms": idle_worst * 1e3,
        "rss_mb_after_burst": rss,
        "render_per_query_run_ms": statistics.median(incremental) * 1e3,
        "render_everything_ms": statistics.median(full) * 1e3,
        "render_ratio_everything_over_per_query": statistics.median(full)
        / statistics.median(incremental),
        "exposition_bytes": len(body),
        "exposition_gzip_bytes": len(store.current.text.gzipped),
        "exposition_gzip_one_member_bytes": len(gzip.compress(body, 6)),
    }


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location = /metrics {{
            default_type "text/plain; version=0.0.4; charset=utf-8";
            gzip_static on;
            alias {dir}/metrics;
        }}
    }}
}}
"""


def start_nginx(workdir: Path) -> Server:
    """nginx (``NGINX_CONF``: one worker) serving ``workdir``'s ``metrics`` file (and its
    ``metrics.gz``, if there is one) on a free port, once it answers; stopped if it never
    does."""
    os.chmod(workdir, 0o755)  # noqa: S103 - nginx's worker (user nobody) reads the bytes
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=workdir, port=port))
    proc = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = Server(proc, f"http://127.0.0.1:{port}")
    try:
        wait_for(server.url + "/metrics")
    except Exception:
        server.stop()
        raise
    return server


def scrape_vs_nginx(dsn: str, seconds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tw-bench-nginx-"))
    path = workdir / "queries.yml"
    path.write_text(queries_file(builtins=True))
    port = free_port()
    exporter = start(
        ["-m", "exporter", "run", "--dsn", dsn, "--queries-file", str(path), "--interval", "15",
         "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        port,
        "/readyz",
    )  # fmt: skip
    out: dict[str, Any] = {"wrk_seconds": seconds}
    nginx: Server | None = None
    try:
        _, body = get(exporter.url + "/metrics")  # /readyz: every query's data is served
        assert body.count(b"# TYPE tw_bench_q") == QUERIES
        (workdir / "metrics").write_bytes(body)
        # The exporter's own gzip response (one gzip member per query part), byte for byte.
        request = urllib.request.Request(
            exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            (workdir / "metrics.gz").write_bytes(response.read())
        out["body_bytes"] = len(body)
        out["exporter_plain"] = measure_wrk(exporter, "/metrics", seconds)
        out["exporter_gzip"] = measure_wrk_gzip(exporter, seconds)
        nginx = start_nginx(workdir)
        worker = list(psutil.Process(nginx.proc.pid).children())
        out["nginx_plain"] = measure_wrk(nginx, "/metrics", seconds)
        out["nginx_gzip"] = measure_wrk_gzip(nginx, seconds)
        out["nginx_workers"] = len(worker)
        for kind in ("plain", "gzip"):
            out[f"ratio_{kind}"] = out[f"exporter_{kind}"]["rps"] / out[f"nginx_{kind}"]["rps"]
    finally:
        exporter.stop()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def measure_wrk_gzip(server: Server, seconds: int) -> dict[str, float]:
    import re

    cpu0 = server.cpu()
    result = subprocess.run(
        ["wrk", "-t2", "-c8", f"-d{seconds}s", "-H", "Accept-Encoding: gzip",
         server.url + "/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", result).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", result).group(1))  # type: ignore[union-attr]
    cpu = server.cpu() - cpu0
    return {"rps": rps, "requests": requests, "cpu_per_request_us": cpu / max(1, requests) * 1e6}


async def fast_beside_slow(
    dsn: str, slow_queries: int, seconds: float, *, fair: bool = True
) -> dict[str, Any]:
    """A 1 s query listed after ``slow_queries`` queries that take 3 s every 30 s (so at start
    every slow one is ahead of it), on a pool bounded at the default five connections, for
    ``seconds`` (35 covers the slow queries' start-up run and their next one at 30 s)."""
    text = OFF + "queries:\n"
    for i in range(slow_queries):
        text += (
            f"  slow{i}: {{sql: 'SELECT 1 AS tw_slow{i} FROM pg_sleep(3)', interval: 30,\n"
            f"           timeout: 10, metrics: {{tw_slow{i}: {{help: h}}}}}}\n"
        )
    text += "  fast: {sql: 'SELECT 1 AS tw_fast', interval: 1, metrics: {tw_fast: {help: h}}}\n"
    config = parse(text, query_params())
    application_name = f"tw-bench-fair-{os.getpid()}-{slow_queries}-{int(fair)}"
    pipeline = build_pipeline(
        query_params(
            dsn=dsn, query_timeout=10.0, max_staleness=3600.0, max_connections=MAX_POOL_SIZE
        ),
        config,
        application_name=application_name,
    )
    await pipeline.open()
    database, store, collector = pipeline.database, pipeline.store, pipeline.collector
    database.slots.fair = fair  # the private switch: False is plain first come, first served
    successes: list[float] = []
    original = store.record_success

    def record(query: str, families: list[Any], wall_time: float) -> None:
        if query == "fast":
            successes.append(wall_time)
        original(query, families, wall_time)

    store.record_success = record  # type: ignore[method-assign]
    admin = await asyncpg.connect(dsn)
    backends: list[int] = []
    started = time.time()
    scheduler = start_scheduler(collector)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        backends.append(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                application_name,
            )
        )
        await asyncio.sleep(0.1)
    scheduler.shutdown(wait=False)
    await collector.cancel_running(1.0)
    await database.close()
    await admin.close()
    store.render()
    gaps = [b - a for a, b in itertools.pairwise(successes)]
    text_out = store.current.text.body.decode()
    names = ["fast", *(f"slow{i}" for i in range(slow_queries))]
    return {
        "slow_queries": slow_queries,
        "fair": fair,
        "pool_size": database.slots.capacity,
        "fast_successes": len(successes),
        "fast_first_success_s": successes[0] - started if successes else None,
        "fast_gap_max_s": max(gaps) if gaps else None,
        "fast_gap_median_s": statistics.median(gaps) if gaps else None,
        "fast_skipped": _sample(text_out, 'tw_exporter_cycles_skipped_total{query="fast"}'),
        "connection_errors_all_queries": sum(
            _sample(text_out, f'tw_exporter_query_errors_total{{query="{n}",reason="connection"}}')
            or 0
            for n in names
        ),
        "slow_runs": sum(collector.runs_completed.get(n, 0) for n in names[1:]),
        "max_backends": max(backends),
        "seconds": seconds,
    }


async def fairness(dsn: str, seconds: float) -> list[dict[str, Any]]:
    """Part 4: each case with the fairness rule and without it, in the same run."""
    rows = []
    for slow in (1, 5):
        for fair in (False, True):
            row_ = await fast_beside_slow(dsn, slow, seconds, fair=fair)
            log(f"[custom] fast beside {slow} slow, fair={fair}: {row_}")
            rows.append(row_)
    return rows


def _sample(text: str, key: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return None


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown(report: dict[str, Any]) -> str:
    b, s = report["burst"], report["scrape"]
    ex, ng = s["exporter_plain"], s["nginx_plain"]
    exg, ngg = s["exporter_gzip"], s["nginx_gzip"]
    lines = [
        "# Custom queries at scale",
        "",
        f"Command: `{report['command']}`. Dataset: {report['scale']} tweets. All numbers from "
        "one run on one machine (server, PostgreSQL, wrk and nginx share its cores).",
        "",
        f"## {b['queries']} queries x {b['series_per_query']} series",
        "",
        row("measure", "value"),
        row("---", "---"),
        row("business series served", b["business_series"]),
        row(
            "all 50 run together (after start-up): time until every one has a result",
            f"{b['burst_all_done_s']:.2f} s",
        ),
        row(
            "longest event-loop stall meanwhile (1 ms ticker)",
            f"{b['burst_worst_loop_stall_ms']:.1f} ms (idle, same ticker: "
            f"{b['idle_worst_loop_stall_ms']:.1f} ms)",
        ),
        row(
            "render after one query's run (its part + health)",
            f"{b['render_per_query_run_ms']:.2f} ms",
        ),
        row("render of every part (whole exposition)", f"{b['render_everything_ms']:.2f} ms"),
        row("ratio whole / per query", f"{b['render_ratio_everything_over_per_query']:.1f}x"),
        row(
            "exposition (text)",
            f"{b['exposition_bytes']:,} bytes, gzip {b['exposition_gzip_bytes']:,} "
            f"(one gzip member: {b['exposition_gzip_one_member_bytes']:,})",
        ),
        row("RSS after the burst (benchmark process)", f"{b['rss_mb_after_burst']:.0f} MB"),
        "",
        f"## Scrape throughput vs nginx (same {s['body_bytes']:,} bytes, "
        f"wrk -t2 -c8 -d{s['wrk_seconds']}s)",
        "",
        row("server", "plain req/s", "gzip req/s"),
        row("---", "---", "---"),
        row("tw-exporter (1 process)", f"{ex['rps']:.0f}", f"{exg['rps']:.0f}"),
        row("nginx (1 worker)", f"{ng['rps']:.0f}", f"{ngg['rps']:.0f}"),
        row("ratio exporter / nginx", f"{s['ratio_plain']:.2f}", f"{s['ratio_gzip']:.2f}"),
        "",
    ]
    lines += fairness_markdown(report["fast_beside_slow"])
    return "\n".join(lines) + "\n"


def fairness_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## A 1 s query beside slow ones (30 s interval, 3 s each), pool bound 5",
        "",
        "The fast query is listed after the slow ones. *fairness off* is plain first come, "
        "first served (the pool before the rule), measured in the same run.",
        "",
        row(
            "slow queries",
            "pool",
            "fairness",
            "fast successes",
            "first success",
            "median gap",
            "max gap",
            "fast skipped",
            "connection errors (all)",
            "slow runs",
            "most backends",
        ),
        row(*["---"] * 11),
    ]
    for r in rows:
        lines.append(
            row(
                r["slow_queries"],
                r["pool_size"],
                "on" if r["fair"] else "off",
                f"{r['fast_successes']} in {r['seconds']:.0f} s",
                f"{r['fast_first_success_s']:.2f} s",
                f"{r['fast_gap_median_s']:.3f} s",
                f"{r['fast_gap_max_s']:.3f} s",
                f"{r['fast_skipped']:.0f}",
                f"{r['connection_errors_all_queries']:.0f}",
                r["slow_runs"],
                r["max_backends"],
            )
        )
    by_case = {(r["slow_queries"], r["fair"]): r for r in rows}
    lines.append("")
    for slow in sorted({r["slow_queries"] for r in rows}):
        on, off = by_case.get((slow, True)), by_case.get((slow, False))
        if on and off:
            lines.append(
                f"- {slow} slow: fast query's max gap {off['fast_gap_max_s']:.2f} s -> "
                f"{on['fast_gap_max_s']:.2f} s (ratio off/on "
                f"{off['fast_gap_max_s'] / on['fast_gap_max_s']:.1f}x)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="1m", choices=("100k", "1m", "10m"))
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per server")
    parser.add_argument(
        "--only",
        choices=("all", "fairness"),
        default="all",
        help="fairness: part 4 alone, on the admin database (no dataset needed)",
    )
    parser.add_argument(
        "--window", type=float, default=35.0, help="seconds per fast-beside-slow case"
    )
    args = parser.parse_args()
    if args.only == "fairness":
        rows = asyncio.run(fairness(ADMIN_DSN, args.window))
        out = {
            "command": "python -m benchmarks.custom_queries --only fairness "
            f"--window {args.window:g}",
            "fast_beside_slow": rows,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "POOL_FAIRNESS.json").write_text(json.dumps(out, indent=2) + "\n")
        head = ["# Pool fairness", "", f"Command: `{out['command']}`.", ""]
        (RESULTS / "POOL_FAIRNESS.md").write_text("\n".join(head + fairness_markdown(rows)) + "\n")
        print(json.dumps(out, indent=2))
        return
    dsn = asyncio.run(ensure_dataset(args.scale))
    report: dict[str, Any] = {
        "command": f"python -m benchmarks.custom_queries --scale {args.scale} "
        f"--seconds {args.seconds} --window {args.window:g}",
        "scale": args.scale,
    }
    report["burst"] = asyncio.run(burst_and_render(dsn))
    log(f"[custom] burst/render: {report['burst']}")
    report["scrape"] = scrape_vs_nginx(dsn, args.seconds)
    log(f"[custom] scrape: ratio plain {report['scrape']['ratio_plain']:.2f}, "
        f"gzip {report['scrape']['ratio_gzip']:.2f}")  # fmt: skip
    report["fast_beside_slow"] = asyncio.run(fairness(dsn, args.window))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "CUSTOM_QUERIES.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "CUSTOM_QUERIES.md").write_text(markdown(report))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
