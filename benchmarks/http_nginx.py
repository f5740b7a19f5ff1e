"""The exporter's ``/metrics`` against nginx serving the very same bytes (issue #21).

    python -m benchmarks.http_nginx [--tree DIR] [--rounds 3] [--seconds 10] [--tweets 20000]

Starts ``tw-exporter run --interval 1`` (this tree's code, or ``--tree DIR``'s, e.g. a
``git archive`` of main) on a synthetic dataset created on ``TW_BENCH_DSN`` (about 22 kB of
``/metrics`` at 20,000 tweets, the size of the demo's), writes the bytes it serves to a file,
and starts nginx (nginx-light, one worker, access log off) serving that file with the same
Content-Type. Then ``wrk -t2 -c8 -d<seconds>s --latency`` on each in turn, alternating which
goes first (ABBA), for ``--rounds`` rounds; prints each run and the ratio exporter/nginx per
round. Both servers run the whole time, so each is measured under the same background (the
exporter keeps collecting every second). Writes ``results/HTTP_NGINX.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import RESULTS, ROOT, SCALES, drop_dataset, ensure_dataset, log, machine
from benchmarks.custom_queries import start_nginx
from benchmarks.scrape import Server, free_port, get, measure_wrk, start

SCALE = "http_nginx"  # -> database tw_bench_http_nginx


def start_exporter(tree: Path, dsn: str) -> Server:
    port = free_port()
    argv = ["-m", "exporter", "run", "--dsn", dsn, "--interval", "1",
            "--listen", f"127.0.0.1:{port}", "--log-level", "warning"]  # fmt: skip
    return start(argv, port, "/readyz", cwd=tree)


def serve_with_nginx(workdir: Path, body: bytes) -> Server:
    (workdir / "metrics").write_bytes(body)
    (workdir / "metrics").chmod(0o644)
    server = start_nginx(workdir)
    workers = psutil.Process(server.proc.pid).children()
    assert len(workers) == 1, workers
    return server


def run(tree: Path, dsn: str, rounds: int, seconds: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tw-bench-nginx-"))
    exporter = start_exporter(tree, dsn)
    nginx: Server | None = None
    try:
        _, body = get(exporter.url + "/metrics")
        nginx = serve_with_nginx(workdir, body)
        _, served = get(nginx.url + "/metrics")
        assert served == body
        servers = {"exporter": exporter, "nginx": nginx}
        runs: list[dict[str, Any]] = []
        for i in range(rounds):
            order = ["exporter", "nginx"] if i % 2 == 0 else ["nginx", "exporter"]
            result: dict[str, Any] = {}
            for name in order:
                result[name] = measure_wrk(servers[name], "/metrics", seconds)
                log(f"[http_nginx] round {i + 1} {name}: {result[name]['rps']:,.0f} req/s")
            result["ratio"] = result["exporter"]["rps"] / result["nginx"]["rps"]
            log(f"[http_nginx] round {i + 1}: exporter/nginx {result['ratio']:.2f}x")
            runs.append(result)
    finally:
        exporter.stop()
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "body_bytes": len(body),
        "runs": runs,
        "ratios": [r["ratio"] for r in runs],
        "median_ratio": statistics.median(r["ratio"] for r in runs),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# /metrics vs nginx serving the same bytes (benchmarks/http_nginx.py)",
        "",
        f"`{result['command']}`: `wrk -t2 -c8 -d{result['seconds']}s --latency` on `/metrics` of "
        f"`tw-exporter run --interval 1` ({result['tree']}) and of nginx (one worker) serving "
        f"its {result['body_bytes']:,} bytes, alternated. "
        f"Machine: {result['machine']['nproc']} x {result['machine']['cpu']}, shared.",
        "",
        "| round | exporter req/s | nginx req/s | exporter/nginx | exporter p99 ms "
        "| nginx p99 ms | exporter CPU µs/req |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(result["runs"], 1):
        e, n = r["exporter"], r["nginx"]
        lines.append(
            f"| {i} | {e['rps']:,.0f} | {n['rps']:,.0f} | {r['ratio']:.2f}x "
            f"| {e['p99'] * 1e3:.2f} | {n['p99'] * 1e3:.2f} | {e['cpu_per_request_us']:.1f} |"
        )
    lines += ["", f"Median ratio: {result['median_ratio']:.2f}x."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tree", type=Path, default=ROOT, help="tree whose exporter runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--tweets", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "HTTP_NGINX.md")
    args = parser.parse_args()
    SCALES.setdefault(SCALE, args.tweets)
    try:
        dsn = asyncio.run(ensure_dataset(SCALE))
        result = run(args.tree.resolve(), dsn, args.rounds, args.seconds)
    finally:
        asyncio.run(drop_dataset(SCALE))
    result["command"] = "python -m benchmarks.http_nginx " + " ".join(sys.argv[1:])
    result["seconds"], result["machine"] = args.seconds, machine()
    result["tree"] = "this tree" if args.tree.resolve() == ROOT else str(args.tree)
    args.out.write_text(markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()
