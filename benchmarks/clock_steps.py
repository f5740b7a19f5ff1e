"""Wall-clock steps under a real exporter (issue 23, point 3): how long a step delays a run.

``python -m benchmarks.clock_steps --rounds 3`` creates its own database (``tw_clock_steps``,
the shipped schema and a few rows) on ``TW_BENCH_DSN``, and starts ``tw-exporter run
--interval 1 --query-timeout 0.5`` under libfaketime (``LD_PRELOAD``, the offset read from a
file at most once a second, ``FAKETIME_DONT_FAKE_MONOTONIC=1`` so only the wall clock steps,
as an NTP step does). Each round steps the clock back 300 s, then forward 300 s back to the
truth, and, with ``--ha``, the same on an ``--ha`` leader with a 60 s step back; ``/metrics``
is scraped every 0.1 s. Per step it records the longest time between two runs of one query
ending (a run ends when its ``tw_exporter_query_duration_seconds_count`` goes up) over the
``--watch`` seconds after the step, and the scrapes that served a business series more than
``--max-staleness`` (3 s) after that query's last success. Writes
``results/CLOCK_STEPS.{md,json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, drop_database, log, machine, schema_database
from benchmarks.soak import listening_url, value
from exporter.collectors import COLLECTORS, QUERY_NAMES

DATABASE = "tw_clock_steps"
# Debian's faketime package, on any architecture (x86_64-linux-gnu, aarch64-linux-gnu, ...).
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)
INTERVAL = 1.0
STALENESS = 3 * INTERVAL
POLL = 0.1
OWNER = {spec.name: c.name for c in COLLECTORS for spec in c.metrics}


async def prepare() -> str:
    return await schema_database(
        DATABASE,
        "INSERT INTO tw_users (id, username, follower_count) VALUES (1, 'ann', 7);"
        "INSERT INTO tw_tweets (id, user_id, like_count) VALUES (1, 1, 5);"
        "INSERT INTO tw_hashtags (id, tag) VALUES (1, 'db');"
        "INSERT INTO tw_tweet_hashtags VALUES (1, 1)",
    )


def start(
    dsn: str, offset: Path, ha: bool, logs: Path, tree: Path
) -> tuple[subprocess.Popen[bytes], str]:
    offset.write_text("+0\n")
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        # The offset file is read again at most once a second (re-reading it on every clock
        # call costs the exporter 15x its CPU); a step is seen within ~1.5 s of the write.
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    argv = [sys.executable, "-m", "exporter", "run", "--dsn", dsn, "--listen", "127.0.0.1:0"]
    argv += ["--interval", str(INTERVAL), "--query-timeout", "0.5"]
    if ha:
        argv += ["--ha", "--ha-lease", "3"]
    with logs.open("w") as sink:
        proc = subprocess.Popen(argv, env=env, cwd=tree, stdin=subprocess.DEVNULL, stderr=sink)
    return proc, listening_url(proc, logs, "the exporter")


class Watch:
    """Run ends and stale series, seen by scraping every POLL seconds (monotonic clock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ends: dict[str, list[float]] = {q: [] for q in QUERY_NAMES}
        self.counts: dict[str, float] = {}
        self.successes: dict[str, float] = {}
        self.success_seen: dict[str, float] = {}
        self.stale = 0
        self.scrapes = 0

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            body: str = response.read().decode()
        now = time.monotonic()
        self.scrapes += 1
        for query in QUERY_NAMES:
            count = value(body, "tw_exporter_query_duration_seconds_count", query=query) or 0.0
            if count > self.counts.get(query, 0.0):
                self.ends[query].append(now)
            self.counts[query] = count
            success = value(body, "tw_exporter_query_last_success_timestamp_seconds", query=query)
            if success != self.successes.get(query):
                self.success_seen[query] = now
            self.successes[query] = success or 0.0
        for line in body.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            query = OWNER.get(name)
            if query and now - self.success_seen.get(query, now) > STALENESS + POLL:
                self.stale += 1
                break
        return body

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.scrape()
            time.sleep(POLL)

    def worst_gap(self, since: float) -> float:
        worst = 0.0
        for ends in self.ends.values():
            points = [since] + [t for t in ends if t > since] + [time.monotonic()]
            worst = max(worst, *(b - a for a, b in itertools.pairwise(points)))
        return worst


def measure(
    dsn: str, ha: bool, steps: list[int], watch: float, directory: Path, tree: Path
) -> list[dict]:
    offset = directory / f"faketime-{int(ha)}"
    logs = directory / f"exporter-{int(ha)}.log"
    proc, url = start(dsn, offset, ha, logs, tree)
    rows: list[dict[str, Any]] = []
    try:
        seen = Watch(url)
        deadline = time.monotonic() + 30
        while not all(len(e) >= 2 for e in seen.ends.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the exporter never ran its queries")
            seen.scrape()
            time.sleep(POLL)
        total = 0
        for step in steps:
            total += step
            stale_before, scrapes_before = seen.stale, seen.scrapes
            stalls_before = logs.read_text().count("the process stood still")
            offset.write_text(f"{total:+d}\n")
            stepped = time.monotonic()
            seen.run(watch)
            rows.append(
                {
                    "ha": ha,
                    "step": step,
                    "longest_gap_s": round(seen.worst_gap(stepped), 3),
                    "stale_scrapes": seen.stale - stale_before,
                    "scrapes": seen.scrapes - scrapes_before,
                    # Skipped ticks the exporter blamed on its own process standing still
                    # (starved of CPU by other work on the machine), during this step.
                    "stood_still_lines": logs.read_text().count("the process stood still")
                    - stalls_before,
                }
            )
            log(f"  ha={ha} step {step:+d}s: {rows[-1]}")
        body = seen.scrape()
        rows[-1]["clock_steps_total"] = value(body, "tw_exporter_clock_steps_total")
    finally:
        proc.terminate()
        proc.wait(10)
    rows[-1]["step_lines"] = logs.read_text().count("the wall clock stepped")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--watch", type=float, default=8.0, help="seconds watched per step")
    parser.add_argument("--ha", action="store_true", help="also an --ha leader, 60 s back")
    parser.add_argument(
        "--tree",
        type=Path,
        default=ROOT,
        help="the source tree whose exporter runs (e.g. `git archive` of an older commit, to "
        "measure the behaviour before a change); default: this checkout",
    )
    parser.add_argument("--out", default="CLOCK_STEPS", help="results file name, no suffix")
    args = parser.parse_args()
    if not LIBFAKETIME.is_file():
        sys.exit(f"{LIBFAKETIME} is missing (Debian package faketime)")
    dsn = asyncio.run(prepare())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            rows += measure(dsn, False, [-300, 300], args.watch, Path(tmp), args.tree)
            if args.ha:
                rows += measure(dsn, True, [-60, 60], args.watch, Path(tmp), args.tree)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    tree_flag = "" if args.tree == ROOT else f" --tree {args.tree} --out {args.out}"
    box = machine()
    where = f"{box['nproc']} vCPU {box['cpu']}, Python {box['python']}"
    lines = [
        "# Wall-clock steps under a real exporter",
        "",
        f"`python -m benchmarks.clock_steps --rounds {args.rounds} --watch {args.watch:g}"
        f"{' --ha' if args.ha else ''}{tree_flag}` ({where}): `--interval 1`, libfaketime stepping "
        "only the wall clock. Longest gap: the longest time between two runs of one query "
        "ending, over the watched seconds after the step (the interval is 1 s). Stale scrapes: "
        "scrapes that served a business series more than `--max-staleness` (3 s) after its "
        "query's last success.",
        "",
        "| `--ha` | step | longest gap between runs | stale scrapes / scrapes | skips blamed on "
        "the process standing still |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {'yes' if row['ha'] else 'no'} | {row['step']:+d} s | {row['longest_gap_s']:.2f} s"
            f" | {row['stale_scrapes']} / {row['scrapes']} | {row['stood_still_lines']} |"
        )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    log(f"wrote benchmarks/results/{args.out}.md")

    asyncio.run(drop_database(DATABASE))


if __name__ == "__main__":
    main()
