"""Repeated HA takeovers (issue #13): how long until a follower serves fresh business series.

``python -m benchmarks.failover --rounds 24`` creates the database ``tw_bench_failover`` on
``TW_BENCH_DSN`` (schema plus a few rows), starts two real ``tw-exporter run --ha`` processes
(``--interval 1 --query-timeout 0.5 --ha-lease 3``) and, round after round, hits the current
leader with one fault, in turn:

* ``sigterm``: a clean exit (rolling update);
* ``sigkill``: a crash;
* ``cut``: its lock session is ended on the server (``pg_terminate_backend``), as a lost
  database connection;
* ``freeze`` (with ``--freeze``; each costs about a lease): SIGSTOP, then SIGCONT after the
  follower has taken over.

The takeover time runs from the fault to the first scrape of the other replica that shows
``tw_exporter_leader 1`` *and* business series; a dead replica is then replaced by a fresh one
that must come up as a follower. All along, ``pg_stat_activity`` is sampled for replicas with
exporter queries running; the report states the most seen at one instant (must be 1).

The baseline, measured in the same run, is what the chart did before HA: one replica without
``--ha`` is SIGKILLed and a new process started in its place (what a Deployment does, minus
scheduling and image pull); its time to fresh business series is the gap a restart costs.
Writes ``results/FAILOVER.md`` and ``results/FAILOVER.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks.common import RESULTS, ROOT, log, machine, schema_database
from exporter.db.leader import LOCK_APPLICATION_PREFIX, QUERY_APPLICATION_PREFIX

DATABASE = "tw_bench_failover"
FLAGS = ("--interval", "1", "--query-timeout", "0.5")
HA_FLAGS = ("--ha", "--ha-lease", "3", *FLAGS)
LISTEN_RE = re.compile(r"listening on (http://\S+?)/metrics")
KINDS = ("sigterm", "sigkill", "cut")


@dataclass
class Replica:
    proc: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def lock_name(self) -> str:
        return f"{LOCK_APPLICATION_PREFIX}{socket.gethostname()}:{self.proc.pid}"


def start(dsn: str, flags: tuple[str, ...]) -> Replica:
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--dsn", dsn, "--listen", "127.0.0.1:0", *flags],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    replica = Replica(proc)
    listening = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            replica.lines.append(line)
            match = LISTEN_RE.search(line)
            if match and not replica.url:
                replica.url = match.group(1)
                listening.set()
        listening.set()

    threading.Thread(target=pump, daemon=True).start()
    if not listening.wait(30) or not replica.url:
        proc.kill()
        raise RuntimeError("exporter did not start:\n" + "".join(replica.lines))
    return replica


async def scrape(replica: Replica) -> str:
    def get() -> str:
        try:
            with urllib.request.urlopen(replica.url + "/metrics", timeout=2) as response:
                body: str = response.read().decode()
                return body
        except OSError:
            return ""

    return await asyncio.to_thread(get)


def leads_with_data(body: str) -> bool:
    return "\ntw_exporter_leader 1.0" in body and "tw_platform_tweets{" in body


def follows(body: str) -> bool:
    return "\ntw_exporter_leader 0.0" in body and "\ntw_up 1.0" in body


async def poll(replica: Replica, condition: Any, timeout: float = 30.0) -> float:
    started = time.monotonic()
    while not condition(await scrape(replica)):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"condition not met within {timeout:.0f}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@dataclass
class Sampler:
    dsn: str
    worst: int = 0
    samples: int = 0

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                names = await conn.fetchval(
                    "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
                    "WHERE datname = $1 AND state = 'active' AND application_name LIKE $2",
                    DATABASE,
                    QUERY_APPLICATION_PREFIX + "%",
                )
                self.samples += 1
                self.worst = max(self.worst, int(names))
                await asyncio.sleep(0.005)
        finally:
            await conn.close()


async def prepare() -> str:
    return await schema_database(
        DATABASE, "INSERT INTO tw_users (username, follower_count) VALUES ('ann', 7), ('bob', 3)"
    )


async def leader_and_follower(a: Replica, b: Replica) -> tuple[Replica, Replica]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body_a, body_b = await scrape(a), await scrape(b)
        if leads_with_data(body_a) and follows(body_b):
            return a, b
        if leads_with_data(body_b) and follows(body_a):
            return b, a
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader/follower pair within 30s")


async def fault(kind: str, leader: Replica, dsn: str) -> None:
    if kind == "sigterm":
        leader.proc.send_signal(signal.SIGTERM)
    elif kind == "sigkill":
        leader.proc.send_signal(signal.SIGKILL)
    elif kind == "freeze":
        leader.proc.send_signal(signal.SIGSTOP)
    else:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1",
                leader.lock_name,
            )
        finally:
            await conn.close()


async def takeovers(dsn: str, rounds: int, kinds: tuple[str, ...]) -> dict[str, list[float]]:
    a, b = start(dsn, HA_FLAGS), start(dsn, HA_FLAGS)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for number in range(rounds):
            kind = kinds[number % len(kinds)]
            leader, follower = await leader_and_follower(a, b)
            started = time.monotonic()
            await fault(kind, leader, dsn)
            await poll(follower, leads_with_data)
            seconds = time.monotonic() - started
            times[kind].append(seconds)
            log(f"round {number + 1:2d} {kind:8s} {seconds:.3f}s")
            if kind == "freeze":
                leader.proc.send_signal(signal.SIGCONT)
                await poll(leader, follows)
            elif kind == "cut":
                await poll(leader, follows)
            else:
                leader.proc.wait(10)
                leader = start(dsn, HA_FLAGS)
                await poll(leader, follows)
            a, b = follower, leader
    finally:
        for replica in (a, b):
            if replica.proc.poll() is None:
                replica.proc.send_signal(signal.SIGCONT)
                replica.proc.kill()
                replica.proc.wait(10)
    return times


async def restart_baseline(dsn: str, rounds: int) -> list[float]:
    """Without HA: SIGKILL the only replica, start a new one, time to fresh business series."""
    times = []
    replica = start(dsn, FLAGS)
    try:
        await poll(replica, lambda body: "tw_platform_tweets{" in body)
        for _ in range(rounds):
            started = time.monotonic()
            replica.proc.kill()
            replica.proc.wait(10)
            replica = start(dsn, FLAGS)
            await poll(replica, lambda body: "tw_platform_tweets{" in body)
            times.append(time.monotonic() - started)
    finally:
        replica.proc.kill()
        replica.proc.wait(10)
    return times


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "worst": max(values),
    }


async def main_async(args: argparse.Namespace) -> None:
    dsn = await prepare()
    sampler = Sampler(dsn)
    sampling = asyncio.create_task(sampler.run())
    kinds = (*KINDS, "freeze") if args.freeze else KINDS
    try:
        times = await takeovers(dsn, args.rounds, kinds)
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
    baseline = await restart_baseline(dsn, args.baseline_rounds)
    every = [t for values in times.values() for t in values]
    result = {
        "command": "python -m benchmarks.failover " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "flags": list(HA_FLAGS),
        "takeover": {kind: summary(values) for kind, values in times.items() if values},
        "all": summary(every),
        "restart_baseline": summary(baseline),
        "ratio_median_vs_restart": statistics.median(every) / statistics.median(baseline),
        "most_replicas_querying_at_once": sampler.worst,
        "pg_stat_activity_samples": sampler.samples,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "FAILOVER.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        f"| {kind} | {s['n']} | {s['min']:.2f} | {s['median']:.2f} | {s['worst']:.2f} |"
        for kind, s in [*result["takeover"].items(), ("all takeovers", result["all"])]
    ]
    base = result["restart_baseline"]
    (RESULTS / "FAILOVER.md").write_text(
        "# HA takeovers (benchmarks/failover.py)\n\n"
        f"Command: `{result['command']}`; replicas run `{' '.join(HA_FLAGS)}`.\n"
        "Machine: " + ", ".join(f"{k} {v}" for k, v in result["machine"].items()) + ".\n\n"
        "Seconds from the fault on the leader to the first scrape of the follower showing "
        "`tw_exporter_leader 1` and business series.\n\n"
        "| fault | n | min | median | worst |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n| baseline: restart without HA (SIGKILL, start a new process) | {base['n']} | "
        f"{base['min']:.2f} | {base['median']:.2f} | {base['worst']:.2f} |\n\n"
        f"Median takeover / median restart: {result['ratio_median_vs_restart']:.2f}. "
        f"Most replicas with exporter queries running at one instant: "
        f"{sampler.worst} ({sampler.samples} `pg_stat_activity` samples).\n"
    )
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=24, help="takeovers (default 24)")
    parser.add_argument("--baseline-rounds", type=int, default=5)
    parser.add_argument("--freeze", action="store_true", help="also SIGSTOP leaders (slow)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
