"""Wall-clock steps (an NTP step, a VM restored from a snapshot): a real exporter process runs
under libfaketime with only its wall clock stepped (``FAKETIME_DONT_FAKE_MONOTONIC``), at
runtime (``FAKETIME_TIMESTAMP_FILE``, re-read every second), as ``date -s`` would do it.

Every query keeps its cadence: no run is delayed by more than two intervals, and no business
series is served past its max staleness, with or without ``--ha``.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from exporter.collectors import COLLECTORS, QUERY_NAMES
from tests.conftest import ExporterProcess, StartExporter, wait_until
from tests.helpers import http_get, poll_sync, series, unavailable, value

INTERVAL = 1.0
QUERY_TIMEOUT = 0.5
STALENESS = 3 * INTERVAL  # the default: three intervals
# How long the test watches after the step; on the unfixed scheduler a step back pauses
# every query for the whole step, so any window of a few intervals shows it.
WATCH = 5 * INTERVAL
POLL = 0.1
# The bound: no query delayed by more than two intervals, i.e. no gap between two
# runs longer than its interval plus two intervals, plus one poll (when a run is seen).
MAX_GAP = 3 * INTERVAL + POLL
# Debian's faketime package, on any architecture (x86_64-linux-gnu, aarch64-linux-gnu, ...).
LIBFAKETIME = next(
    iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
)
RUNS = "tw_exporter_query_duration_seconds_count"
LAST_SUCCESS = "tw_exporter_query_last_success_timestamp_seconds"
# Which query serves each business family, to hold every served series to its query's success.
OWNER = {spec.name: c.name for c in COLLECTORS for spec in c.metrics}


def faketime_env(directory: Path) -> tuple[dict[str, str], Path]:
    """The environment that puts a process under libfaketime, and the file that sets its
    offset ("+0", "-300"): writing it steps the process' wall clock within about a second."""
    if not LIBFAKETIME.is_file():
        unavailable(f"{LIBFAKETIME} is missing (Debian package faketime)")
    offset = directory / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        # Read again at most once a second: re-reading it on every clock call costs the
        # process 15x its CPU, enough to delay runs on a busy machine by itself.
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # only the wall clock steps, as with NTP
    }
    return env, offset


@dataclass
class Watcher:
    """Scrapes a process every ``POLL`` seconds and records, on the test's monotonic clock,
    when each query's run count went up (a run ended) and when its last success changed; and
    every scrape that served a query's business series longer than its staleness after the
    success seen last (``stale``)."""

    url: str
    runs: dict[str, list[float]] = field(default_factory=dict)
    success_seen: dict[str, float] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)
    _counts: dict[str, float] = field(default_factory=dict)
    _successes: dict[str, float] = field(default_factory=dict)
    text: str = ""

    def scrape(self) -> str:
        self.text = http_get(self.url + "/metrics").text
        now = time.monotonic()
        for query in QUERY_NAMES:
            count = value(self.text, RUNS, query=query) or 0.0
            if count > self._counts.get(query, 0.0):
                self.runs.setdefault(query, []).append(now)
            self._counts[query] = count
            success = value(self.text, LAST_SUCCESS, query=query) or 0.0
            if success != self._successes.get(query, 0.0):
                self.success_seen[query] = now
            self._successes[query] = success
        for name, query in OWNER.items():
            if not series(self.text, name):
                continue
            age = now - self.success_seen.get(query, now)
            if age > STALENESS + POLL:
                self.stale.append(f"{name} ({query}) {age:.1f}s after its last success")
        return self.text

    def watch(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.scrape()
            time.sleep(POLL)

    def worst_gap(self, since: float) -> tuple[str, float]:
        """The longest time between two runs of one query ending, from ``since`` on."""
        worst = ("", 0.0)
        for query in QUERY_NAMES:
            ends = [since] + [t for t in self.runs.get(query, []) if t > since]
            gaps = [b - a for a, b in itertools.pairwise(ends)]
            gaps.append(time.monotonic() - ends[-1])
            if max(gaps) > worst[1]:
                worst = (query, max(gaps))
        return worst


def start(
    exporter_proc: StartExporter, dsn: str, env: dict[str, str], *extra: str
) -> ExporterProcess:
    return exporter_proc(
        "--dsn",
        dsn,
        "--interval",
        str(INTERVAL),
        "--query-timeout",
        str(QUERY_TIMEOUT),
        *extra,
        env=env,
    )


@pytest.mark.parametrize(
    ("step", "ha"),
    [(-300, False), (300, False), (-60, True)],
    ids=["back-300s", "forward-300s", "ha-leader-back-60s"],
)
def test_a_wall_clock_step_keeps_every_query_on_its_interval(
    exporter_proc: StartExporter, seeded_db: str, tmp_path: Path, step: int, ha: bool
) -> None:
    env, offset = faketime_env(tmp_path)
    ha_flags = ("--ha", "--ha-lease", "3") if ha else ()
    process = start(exporter_proc, seeded_db, env, *ha_flags)
    watcher = Watcher(process.url)
    poll_sync(
        lambda: (
            value(watcher.scrape(), "tw_exporter_leader") == 1
            and all(len(watcher.runs.get(q, [])) >= 2 for q in QUERY_NAMES)
        ),
        "every query to run twice (as the leader)",
    )
    assert watcher.stale == []

    offset.write_text(f"{step:+d}\n")
    stepped = time.monotonic()
    watcher.watch(WATCH)

    query, gap = watcher.worst_gap(stepped)
    print(f"{step:+d}s step (ha={ha}): longest gap between runs {gap:.2f}s ({query})")
    assert gap <= MAX_GAP, (
        f"{query} went {gap:.1f}s without a run after a {step:+d}s step\n{process.logs()}"
    )
    assert watcher.stale == [], watcher.stale
    assert value(watcher.text, "tw_exporter_clock_steps_total") == 1
    assert value(watcher.text, "tw_exporter_leader") == 1
    direction = "back" if step < 0 else "forward"
    logs = process.logs()
    assert re.search(rf"the wall clock stepped {direction} by {abs(step)}\.\d+s", logs), logs
    assert "no longer the leader" not in logs
    assert "Traceback" not in logs
    assert process.stop() == 0


# ------------------------------------------------------------------ a process that stood still

FREEZE = 3.0


async def lock_users(dsn: str) -> asyncpg.Connection:
    """A transaction holding tw_users: top_users waits on it until its lock_timeout."""
    conn = await asyncpg.connect(dsn)
    await conn.execute("BEGIN; LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
    return conn


async def waiting_on_the_lock(admin: asyncpg.Connection, database: str) -> bool:
    return bool(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            " AND application_name = 'tw-exporter' AND wait_event_type = 'Lock'",
            database,
        )
    )


async def test_a_frozen_process_logs_why_it_skipped_a_run(
    exporter_proc: StartExporter, seeded_db: str
) -> None:
    """SIGSTOP while a run is in flight (waiting on a lock): on SIGCONT the scheduler's tick
    comes before that run's end, so the tick is skipped; the log says the process stood still,
    not that the previous run is still running (which it only is because of the freeze)."""
    process = exporter_proc(
        "--dsn", seeded_db, "--interval", "1", "--query-timeout", "1", "--log-level", "debug"
    )
    holder = await lock_users(seeded_db)
    admin = await asyncpg.connect(seeded_db)
    try:
        await wait_until(lambda: waiting_on_the_lock(admin, urlsplit(seeded_db).path.lstrip("/")))
        process.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(FREEZE)  # the freeze itself, not a synchronisation
        finally:
            process.proc.send_signal(signal.SIGCONT)
        await wait_until(lambda: asyncio.sleep(0, "scheduled run skipped" in process.logs()))
    finally:
        await holder.close()
        await admin.close()
    skipped = [line for line in process.logs().splitlines() if "scheduled run skipped" in line]
    assert skipped, process.logs()
    # The watchdog ticks every second, so it runs at least FREEZE - 1 s late.
    stood_still = r"the process stood still \(its clock watchdog ran [2-9]\.\d+s late"
    assert all(re.search(stood_still, line) for line in skipped), skipped
    assert process.stop() == 0


# ------------------------------------------------------------------ the watch itself


def test_the_watch_reports_steps_not_slewing_and_remembers_stalls() -> None:
    """A step larger than the threshold between two looks is reported once, with its sign;
    NTP slewing (0.5 ms/s at most) never adds up to a step, however long it runs; a
    watchdog tick that comes late is remembered as a stall."""
    from exporter.collect.clock import ClockWatch

    wall, mono = [1_000_000.0], [50.0]
    steps: list[float] = []
    watch = ClockWatch(steps.append, wall=lambda: wall[0], monotonic=lambda: mono[0])
    for _ in range(10_000):  # ~2.8 hours of looks a second apart, slewing at 0.5 ms/s
        mono[0] += 1.0
        wall[0] += 1.0005
        assert watch.check() is None
    wall[0] -= 300.0
    assert watch.check() == pytest.approx(-300.0)
    assert watch.check() is None  # reported once
    wall[0] += 300.0
    assert watch.check() == pytest.approx(300.0)
    assert steps == [pytest.approx(-300.0), pytest.approx(300.0)]
    assert [jump.kind for jump in watch.recent(5.0)] == ["step", "step"]

    watch._due = mono[0] + 1.0  # the watchdog's next tick, as _plan sets it
    mono[0] += 4.0
    wall[0] += 4.0
    assert watch.check() is None
    [stall] = watch.recent(1.0)
    assert stall.kind == "stall" and stall.seconds == pytest.approx(3.0)
    assert "stood still (its clock watchdog ran 3.0s late" in stall.describe()
    mono[0] += 10.0
    wall[0] += 10.0
    assert watch.recent(5.0) == []


def test_a_stop_between_the_two_clock_reads_is_not_a_step() -> None:
    """SIGSTOP (or a paused VM) landing between the watch's read of the monotonic clock and
    its read of the wall clock: both clocks moved by the stop, so no step is reported."""
    from exporter.collect.clock import ClockWatch

    clocks = {"wall": 1_000_000.0, "mono": 50.0}
    reads: list[str] = []

    def read(which: str) -> float:
        reads.append(which)
        if len(reads) == 4:  # the first look: its monotonic read, a 5 s stop, its wall read
            clocks["wall"] += 5.0
            clocks["mono"] += 5.0
        return clocks[which]

    steps: list[float] = []
    watch = ClockWatch(steps.append, wall=lambda: read("wall"), monotonic=lambda: read("mono"))
    assert watch.check() is None
    assert steps == [] and watch.recent(10.0) == []


def test_a_skipped_run_names_every_recent_jump() -> None:
    """A stall and a step noticed together (a VM paused, then its clock corrected): the skip's
    reason names both, the stall first, as they were noticed."""
    from exporter.collect.clock import ClockWatch, explain

    wall, mono = [1_000_000.0], [50.0]
    watch = ClockWatch(lambda step: None, wall=lambda: wall[0], monotonic=lambda: mono[0])
    watch._due = mono[0] + 1.0
    mono[0] += 4.0
    wall[0] += 9.0
    assert watch.check() == pytest.approx(5.0)
    reason = explain(watch.recent(3.0))
    assert reason.startswith("the process stood still (its clock watchdog ran 3.0s late")
    assert reason.endswith("and the wall clock stepped forward by 5.0s")
