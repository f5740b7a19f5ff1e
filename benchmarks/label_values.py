"""Scrape size of the hostile label dataset (issue #15), for this checkout and another one.

    python -m benchmarks.label_values [--before /path/to/old/checkout]

Loads ``tests/hostile_labels.py`` (a 100 kB tag, a 50 kB user, ...) into a fresh database
``tw_bench_labels`` on ``TW_BENCH_DSN``, runs each checkout's real ``tw-exporter run`` on it
with default settings, and prints the bytes of ``/metrics``: Prometheus text uncompressed and
gzipped, and OpenMetrics. ``--before`` runs an older checkout (e.g. the main branch before
the label bound) with this interpreter, so both are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from benchmarks.common import ROOT, create_database
from benchmarks.scrape import free_port
from tests.hostile_labels import TAGS, USERS, load_hostile_labels

DATABASE = "tw_bench_labels"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


async def fresh_database() -> str:
    dsn = await create_database(DATABASE)
    await load_hostile_labels(dsn)
    return dsn


def get(url: str, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


def measure(repo: Path, dsn: str) -> dict[str, int]:
    """Bytes of /metrics served by ``repo``'s exporter once it exports every hostile row."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(repo), "TW_EXPORTER_DSN": dsn}
    command = [sys.executable, "-m", "exporter", "run", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = get(url, {}).decode()
                if text.count("\ntw_hashtag_tweets{") == min(len(TAGS), 10) and text.count(
                    "\ntw_user_followers{"
                ) == min(len(USERS), 10):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the exporter of {repo} did not export the dataset")
            time.sleep(0.2)
        return {
            "text": len(get(url, {})),
            "text gzip": len(get(url, {"Accept-Encoding": "gzip"})),
            "openmetrics": len(get(url, {"Accept": OPENMETRICS})),
            "openmetrics gzip": len(get(url, {"Accept": OPENMETRICS, "Accept-Encoding": "gzip"})),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to measure first")
    args = parser.parse_args()
    dsn = asyncio.run(fresh_database())
    runs = {}
    if args.before:
        runs[f"before ({args.before})"] = measure(args.before.resolve(), dsn)
    runs[f"after ({ROOT})"] = measure(ROOT, dsn)
    kinds = list(next(iter(runs.values())))
    print("| checkout | " + " | ".join(f"{k} (bytes)" for k in kinds) + " |")
    print("|---|" + "---:|" * len(kinds))
    for name, sizes in runs.items():
        print(f"| {name} | " + " | ".join(f"{sizes[k]:,}" for k in kinds) + " |")
    if len(runs) == 2:
        before, after = runs.values()
        print("ratio before/after: " + ", ".join(f"{k} {before[k] / after[k]:.1f}x" for k in kinds))


if __name__ == "__main__":
    main()
