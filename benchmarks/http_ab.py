"""Scrape throughput of this tree's HTTP server against a baseline tree, measured alternately.

    git archive main | tar -x -C /tmp/base-http
    python -m benchmarks.http_ab --baseline /tmp/base-http [--runs 3] [--seconds 10]

The README's scrape benchmark (``wrk -t2 -c8 --latency`` on ``/metrics`` of the real
``tw-exporter run --interval 1``, as in ``benchmarks/scrape.py`` and ``benchmarks/load_auth.py``),
run on the baseline's code and on this tree's code in turn (ABBA order, so drifting load from
other processes on the machine hits both alike), in plain HTTP and with TLS + basic auth
(``--web-config-file``, keep-alive). Prints each run, the medians and the ratio this/baseline;
writes ``results/HTTP_AB.md`` and ``.json``. Both trees run with this virtualenv's packages; the
database is a small synthetic one (the scrape never touches it) created on ``TW_BENCH_DSN`` and
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, SCALES, drop_dataset, ensure_dataset, log, machine
from benchmarks.load_auth import LISTEN_RE, auth_header, fetch, make_web_config, run_wrk
from benchmarks.scrape import Server

SCALE = "http_ab"  # -> database tw_bench_http_ab
TWEETS = 20_000


def start(tree: Path, dsn: str, log_file: Path, *extra: str) -> tuple[Server, str | None]:
    """``python -m exporter run`` with ``tree`` first on sys.path, ready (``/readyz`` 200)."""
    with log_file.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--dsn", dsn, "--interval", "1",
             "--listen", "127.0.0.1:0", "--log-level", "info", *extra],
            cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle,
        )  # fmt: skip
    authorization = auth_header() if extra else None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        match = LISTEN_RE.search(log_file.read_text())
        if match and fetch(match.group(1) + "/readyz", authorization) == 200:
            return Server(proc, match.group(1)), authorization
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raise RuntimeError(f"exporter in {tree} did not become ready:\n{log_file.read_text()}")


def one_run(tree: Path, dsn: str, seconds: int, workdir: Path, tls: bool) -> dict[str, float]:
    extra = ("--web-config-file", str(make_web_config(workdir))) if tls else ()
    server, authorization = start(tree, dsn, workdir / "exporter.log", *extra)
    try:
        headers = [f"Authorization: {authorization}"] if authorization else []
        fetch(server.url + "/metrics", authorization)  # bcrypt once, so the cache is warm
        cpu0 = server.cpu()
        result = run_wrk(server.url + "/metrics", seconds, headers)
        result["cpu_per_request_us"] = (server.cpu() - cpu0) / max(1, result["requests"]) * 1e6
        result["rss_mb"] = server.rss_mb()
        return result
    finally:
        server.stop()


def run(baseline: Path, dsn: str, runs: int, seconds: int) -> dict[str, Any]:
    trees = {"baseline": baseline.resolve(), "this": ROOT}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        mode: {name: [] for name in trees} for mode in ("plain", "tls_auth")
    }
    for i in range(runs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for mode in samples:
            for name in order:
                with tempfile.TemporaryDirectory(prefix="tw-http-ab-") as directory:
                    result = one_run(trees[name], dsn, seconds, Path(directory), mode != "plain")
                samples[mode][name].append(result)
                log(f"[http_ab] run {i + 1} {mode} {name}: {result['rps']:.0f} req/s, "
                    f"p99 {result['p99'] * 1e3:.2f} ms, errors {result['errors']}")  # fmt: skip
    summary: dict[str, Any] = {}
    for mode, by_tree in samples.items():
        medians = {
            name: {
                key: statistics.median(x[key] for x in results)
                for key in ("rps", "p50", "p99", "cpu_per_request_us", "rss_mb")
            }
            for name, results in by_tree.items()
        }
        summary[mode] = {
            "runs": by_tree,
            "median": medians,
            "ratio_rps": medians["this"]["rps"] / medians["baseline"]["rps"],
            "errors": sum(x["errors"] for results in by_tree.values() for x in results),
        }
    return summary


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# HTTP server: this tree vs baseline (benchmarks/http_ab.py)",
        "",
        f"`{result['command']}`; each run `wrk -t2 -c8 -d{result['seconds']}s --latency` on "
        "`/metrics` of `tw-exporter run --interval 1`, trees alternated (ABBA). "
        f"Machine: {result['machine']['nproc']} x {result['machine']['cpu']}, shared.",
        "",
        "| pass | baseline req/s (median) | this req/s (median) | this/baseline "
        "| baseline p99 ms | this p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("plain", "tls_auth"):
        m = result[mode]["median"]
        lines.append(
            f"| {mode} | {m['baseline']['rps']:,.0f} | {m['this']['rps']:,.0f} "
            f"| {result[mode]['ratio_rps']:.2f}x | {m['baseline']['p99'] * 1e3:.2f} "
            f"| {m['this']['p99'] * 1e3:.2f} | {result[mode]['errors']} |"
        )
    lines.append("")
    for mode in ("plain", "tls_auth"):
        for name in ("baseline", "this"):
            each = ", ".join(f"{r['rps']:,.0f}" for r in result[mode]["runs"][name])
            lines.append(f"- {mode}, {name}: {each} req/s")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="tree with the old code")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS / "HTTP_AB.md")
    args = parser.parse_args()
    if not (args.baseline / "exporter" / "expose" / "http.py").is_file():
        parser.error(
            f"--baseline {args.baseline}: expected a tree containing exporter/expose/http.py"
        )
    SCALES.setdefault(SCALE, TWEETS)
    try:
        dsn = asyncio.run(ensure_dataset(SCALE))
        result = run(args.baseline, dsn, args.runs, args.seconds)
    finally:
        asyncio.run(drop_dataset(SCALE))
    result["command"] = "python -m benchmarks.http_ab " + " ".join(sys.argv[1:])
    result["seconds"], result["machine"] = args.seconds, machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
