"""High availability (--ha): real exporter processes against a real PostgreSQL elect one leader
through an advisory lock, and hand the lead over on exit, crash, freeze and a lost connection.

Every multi-replica test samples ``pg_stat_activity`` for the whole scenario and asserts that
at no sample do two replicas have exporter queries running (each replica's query connections
carry its own ``application_name``, ``tw-exporter/<host>:<pid>``).
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
import pytest

from exporter.config import settings as cfg
from exporter.db.leader import (
    LOCK_APPLICATION_PREFIX,
    QUERY_APPLICATION_PREFIX,
    group_key,
    key_halves,
)
from exporter.ops import dataset
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import ExporterProcess, PgServer, StartExporter, wait_until, wait_until_sync
from tests.helpers import ahttp_get, fetchval, value
from tests.pgbouncer import PgBouncer, run_pgbouncer

INTERVAL = 1.0
QUERY_TIMEOUT = 0.5
LEASE = 3.0  # the smallest the settings allow with this query timeout (+ 2 s), plus 0.5
HA_FLAGS = (
    "--ha",
    "--interval",
    str(INTERVAL),
    "--query-timeout",
    str(QUERY_TIMEOUT),
    "--ha-lease",
    str(LEASE),
    "--log-level",
    "debug",
)
# A follower takes over when the lock is released; it has served fresh business series within
# one interval plus this (the "a few seconds").
TAKEOVER_SLACK = 3.0
BUSINESS = ("tw_platform_tweets", "tw_user_followers", "tw_hashtag_tweets")
# pg_stat_activity samples a scenario needs before its verdict (one every few ms when idle).
MIN_SAMPLES = 50


# ------------------------------------------------------------------ helpers


async def scrape(process: ExporterProcess) -> str:
    return (await ahttp_get(process.url + "/metrics")).text


def has_business(text: str) -> bool:
    return any(line.startswith(BUSINESS) for line in text.splitlines())


async def leader_of(process: ExporterProcess) -> float | None:
    try:
        return value(await scrape(process), "tw_exporter_leader")
    except OSError:
        return None


async def serves_fresh_data_as_leader(process: ExporterProcess) -> bool:
    try:
        text = await scrape(process)
    except OSError:
        return False
    return value(text, "tw_exporter_leader") == 1 and "tw_platform_tweets{" in text


async def is_follower(process: ExporterProcess) -> bool:
    try:
        text = await scrape(process)
    except OSError:
        return False
    return value(text, "tw_exporter_leader") == 0 and value(text, "tw_up") == 1


@dataclass
class ActivitySampler:
    """Samples ``pg_stat_activity`` of the test's database every few milliseconds, in a thread
    of its own: the test's blocking calls (starting a replica, waiting for one to exit) are
    exactly when a takeover happens, and must not pause the sampling.

    ``worst`` is the most replicas seen with exporter queries *active* at one instant (the
    claim: never two). Catching a query active is luck, though: on these tables one takes a
    millisecond. So ``ran`` records, without luck, which replicas ran statements while watched
    (a query connection's ``query_start`` moved between two samples): proof that the sampler
    was watching while each leader in turn ran its queries.
    """

    dsn: str
    worst: int = 0
    samples: int = 0
    seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    starts: list[tuple[str, datetime]] = field(default_factory=list)
    """Each statement start ``ran`` counts: (application_name, its ``query_start``, the
    server's clock), so a test can ask which replica started statements after a moment."""
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="activity-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:
            self.error = error

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        database = urlsplit(self.dsn).path.lstrip("/")
        last_start: dict[int, object] = {}  # backend pid: its query_start when last sampled
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT pid, application_name, state, query_start FROM pg_stat_activity "
                    "WHERE datname = $1 AND application_name LIKE $2",
                    database,
                    QUERY_APPLICATION_PREFIX + "%",
                )
                names = frozenset(r["application_name"] for r in rows if r["state"] == "active")
                for row in rows:
                    before = last_start.get(
                        row["pid"], None if self.samples else row["query_start"]
                    )
                    if row["query_start"] is not None and row["query_start"] != before:
                        self.ran.add(row["application_name"])
                        self.starts.append((row["application_name"], row["query_start"]))
                    last_start[row["pid"]] = row["query_start"]
                self.samples += 1
                if names:
                    self.seen.append((time.monotonic(), names))
                self.worst = max(self.worst, len(names))
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    async def watched(self, *replicas: ExporterProcess) -> None:
        """Wait (with a deadline) until the sampler has taken MIN_SAMPLES samples and seen
        each of ``replicas`` run statements, then check that no replica other than those did."""

        async def enough() -> bool:
            assert self.error is None, self.error
            return self.samples >= MIN_SAMPLES and self.ran >= {query_name(r) for r in replicas}

        await wait_until(enough, timeout=15)
        assert self.ran == {query_name(r) for r in replicas}, self.ran


@pytest.fixture
def sampler(seeded_db: str) -> Iterator[ActivitySampler]:
    """An ActivitySampler on the test's database, already sampling when the test starts."""
    sampler = ActivitySampler(seeded_db)
    sampler.start()
    try:
        wait_until_sync(lambda: sampler.samples > 0 or sampler.error is not None, timeout=15)
        assert sampler.error is None, sampler.error
        yield sampler
    finally:
        sampler.stop()
    assert sampler.error is None, sampler.error


async def two_replicas(
    exporter_proc: StartExporter, dsn: str
) -> tuple[ExporterProcess, ExporterProcess]:
    """Start two replicas; return (leader, follower) once both roles are visible."""
    a = exporter_proc("--dsn", dsn, *HA_FLAGS)
    b = exporter_proc("--dsn", dsn, *HA_FLAGS)

    async def settled() -> bool:
        return {await leader_of(a), await leader_of(b)} == {0.0, 1.0}

    await wait_until(settled, timeout=15)
    leader, follower = (a, b) if await leader_of(a) == 1 else (b, a)
    await wait_until(lambda: serves_fresh_data_as_leader(leader), timeout=10)
    await wait_until(lambda: is_follower(follower), timeout=10)
    return leader, follower


async def lock_holder(dsn: str, key: int) -> str | None:
    """application_name of the session holding the group's lock, per pg_locks."""
    high, low = key_halves(key)
    conn = await asyncpg.connect(dsn)
    try:
        name: str | None = await conn.fetchval(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid",
            high,
            low,
        )
    finally:
        await conn.close()
    return name


async def server_clock(dsn: str) -> datetime:
    """The database server's clock now (``pg_stat_activity.query_start`` runs on it)."""
    now = await fetchval(dsn, "SELECT clock_timestamp()")
    assert isinstance(now, datetime)
    return now


def lock_name(process: ExporterProcess) -> str:
    return f"{LOCK_APPLICATION_PREFIX}{socket.gethostname()}:{process.proc.pid}"


def query_name(process: ExporterProcess) -> str:
    """application_name of the replica's query connections."""
    return f"{QUERY_APPLICATION_PREFIX}{socket.gethostname()}:{process.proc.pid}"


async def timed_takeover(new_leader: ExporterProcess, started: float) -> float:
    await wait_until(
        lambda: serves_fresh_data_as_leader(new_leader), timeout=INTERVAL + TAKEOVER_SLACK + 2
    )
    elapsed = time.monotonic() - started
    assert elapsed <= INTERVAL + TAKEOVER_SLACK, elapsed
    return elapsed


# ------------------------------------------------------------------ the key and the settings


async def test_group_key_is_documented_derivation_and_pg_locks_shows_its_halves(
    seeded_db: str,
) -> None:
    expected = int.from_bytes(
        hashlib.sha256(b"tw-exporter:prod-db").digest()[:8], "big", signed=True
    )
    assert group_key("prod-db") == expected
    assert group_key("prod-db") != group_key("prod-db2")
    conn = await asyncpg.connect(seeded_db)
    try:
        for group in ("prod-db", "x", "tw-exporter"):
            key = group_key(group)
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            row = await conn.fetchrow(
                "SELECT classid::bigint AS high, objid::bigint AS low FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND objsubid = 1"
            )
            assert row is not None and (row["high"], row["low"]) == key_halves(key)
            await conn.execute("SELECT pg_advisory_unlock_all()")
    finally:
        await conn.close()


def test_ha_settings() -> None:
    dsn = "postgresql://u@db:5432/app"
    off = cfg.build_settings({"dsn": dsn})
    assert not off.ha and off.ha_dsn == dsn and off.ha_lease == cfg.DEFAULT_HA_LEASE
    parser = cfg.OneLineArgumentParser()
    cfg.add_options(parser, cfg.RUN_OPTIONS)
    on = cfg.settings_from(parser.parse_args(["--dsn", dsn, "--ha"]), {})
    assert on.ha and on.ha_group == "tw-exporter"
    env = cfg.settings_from(parser.parse_args(["--dsn", dsn]), {"TW_EXPORTER_HA": "true"})
    assert env.ha
    off_again = cfg.settings_from(parser.parse_args(["--dsn", dsn, "--ha", "false"]), {})
    assert not off_again.ha
    # A long query timeout stretches the default lease so a frozen leader's query ends first.
    slow = cfg.build_settings({"dsn": dsn, "interval": 60.0, "query_timeout": 30.0})
    assert slow.ha_lease == 30.0 + 2 * cfg.HA_LEASE_MARGIN
    multi = "postgresql://u@db1:5432,db2:5432/app"
    with pytest.raises(cfg.SettingsError, match="target_session_attrs=read-write"):
        cfg.build_settings({"dsn": multi, "dsn__source": "--dsn", "ha": True})
    pinned = cfg.build_settings({"dsn": multi + "?target_session_attrs=read-write", "ha": True})
    assert pinned.ha_dsn.endswith("read-write")
    # Without --ha a multi-host DSN is the query path's business, not the lock's.
    assert not cfg.build_settings({"dsn": multi}).ha


# ------------------------------------------------------------------ the scenarios


async def test_one_leader_runs_the_queries_and_the_follower_serves_health_only(
    exporter_proc: StartExporter, seeded_db: str, sampler: ActivitySampler
) -> None:
    leader, follower = await two_replicas(exporter_proc, seeded_db)
    text = await scrape(follower)
    assert not has_business(text), "a follower serves no business series"
    assert value(text, "tw_exporter_leader") == 0 and value(text, "tw_up") == 1
    ready = await ahttp_get(follower.url + "/readyz")
    assert ready.status == 200, "a follower stays in the Service"
    assert await lock_holder(seeded_db, group_key("tw-exporter")) == lock_name(leader)
    # Several intervals of steady state: only the leader ever queries.
    runs_before = (
        value(
            await scrape(leader), "tw_exporter_query_duration_seconds_count", query="platform_stats"
        )
        or 0
    )
    await wait_until(
        lambda: _runs_above(leader, runs_before + 3), timeout=3 * INTERVAL + TAKEOVER_SLACK
    )
    assert (
        value(
            await scrape(follower),
            "tw_exporter_query_duration_seconds_count",
            query="platform_stats",
        )
        == 0
    )
    await sampler.watched(leader)  # only the leader ran statements, and it was watched
    assert sampler.worst <= 1, sampler.seen[-5:]
    names = {name for _, seen in sampler.seen for name in seen}
    assert names <= {query_name(leader)}


async def _runs_above(process: ExporterProcess, floor: float) -> bool:
    runs = value(
        await scrape(process), "tw_exporter_query_duration_seconds_count", query="platform_stats"
    )
    return runs is not None and runs >= floor


async def test_rolling_restart_and_a_crash_hand_the_lead_over_within_an_interval(
    exporter_proc: StartExporter, seeded_db: str, sampler: ActivitySampler
) -> None:
    first, second = await two_replicas(exporter_proc, seeded_db)
    # Rolling restart: the leader exits (SIGTERM), its replacement joins as a follower...
    stopped = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    took = await timed_takeover(second, stopped)
    third = exporter_proc("--dsn", seeded_db, *HA_FLAGS)
    await wait_until(lambda: is_follower(third), timeout=10)
    # ...then the other one: the lead moves back to the replacement.
    stopped = time.monotonic()
    assert second.stop(signal.SIGTERM) == 0
    took_back = await timed_takeover(third, stopped)
    fourth = exporter_proc("--dsn", seeded_db, *HA_FLAGS)
    await wait_until(lambda: is_follower(fourth), timeout=10)
    # A crash: the kernel closes the socket, PostgreSQL ends the session and its lock.
    crashed = time.monotonic()
    third.stop(signal.SIGKILL)
    took_after_crash = await timed_takeover(fourth, crashed)
    print(
        f"takeover after SIGTERM {took:.2f}s, {took_back:.2f}s; after SIGKILL "
        f"{took_after_crash:.2f}s; {sampler.samples} pg_stat_activity samples"
    )
    await sampler.watched(first, second, third, fourth)
    assert sampler.worst <= 1, sampler.seen[-5:]


async def test_a_frozen_leader_loses_the_lock_within_the_lease_and_steps_down_on_waking(
    exporter_proc: StartExporter, seeded_db: str, sampler: ActivitySampler
) -> None:
    leader, follower = await two_replicas(exporter_proc, seeded_db)
    key = group_key("tw-exporter")
    leader.proc.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    try:

        async def released_by_the_leader() -> bool:
            return await lock_holder(seeded_db, key) != lock_name(leader)

        async def moved() -> bool:
            return await lock_holder(seeded_db, key) == lock_name(follower)

        # The bound: the lease (idle_session_timeout counts from the leader's last round
        # trip, at most a heartbeat before the freeze) plus the server's timer granularity
        # and the polls' own connections on a busy machine. Without the lease a frozen
        # leader's session, and its lock, stay until TCP gives up: minutes.
        await wait_until(released_by_the_leader, timeout=LEASE + 3)
        released = time.monotonic() - frozen
        assert released <= LEASE + 2.0, released
        await wait_until(moved, timeout=INTERVAL + TAKEOVER_SLACK)
        moved_at = time.monotonic()
        await timed_takeover(follower, moved_at)
        lines_before_wake = len(leader.lines)
        woke_at = await server_clock(seeded_db)
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    await wait_until(lambda: is_follower(leader), timeout=10)
    assert not has_business(await scrape(leader))
    woke = leader.logs().splitlines()[lines_before_wake:]
    assert any("no longer the leader" in line for line in woke), woke
    # Give a woken leader that ignored its lost lock several intervals to start a query, then
    # ask the database (the sampler's record of every statement start) who started any.
    runs = value(
        await scrape(follower), "tw_exporter_query_duration_seconds_count", query="platform_stats"
    )
    await wait_until(
        lambda: _runs_above(follower, (runs or 0) + 3), timeout=3 * INTERVAL + TAKEOVER_SLACK
    )
    after_wake = {name for name, started in sampler.starts if started >= woke_at}
    assert query_name(follower) in after_wake, "the sampler saw the new leader's statements"
    assert query_name(leader) not in after_wake, "the woken leader started statements"
    print(f"lock released {released:.2f}s after SIGSTOP (lease {LEASE}s)")
    await sampler.watched(leader, follower)
    assert sampler.worst <= 1, sampler.seen[-5:]


async def test_a_leader_that_loses_its_lock_session_steps_down_and_campaigns_again(
    exporter_proc: StartExporter, seeded_db: str, sampler: ActivitySampler
) -> None:
    leader, follower = await two_replicas(exporter_proc, seeded_db)
    conn = await asyncpg.connect(seeded_db)
    try:
        cut = time.monotonic()
        ended = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            lock_name(leader),
        )
        assert ended == 1
    finally:
        await conn.close()
    await timed_takeover(follower, cut)
    await wait_until(lambda: is_follower(leader), timeout=10)
    assert not has_business(await scrape(leader))
    assert "no longer the leader" in leader.logs()
    await sampler.watched(leader, follower)
    assert sampler.worst <= 1, sampler.seen[-5:]


# ------------------------------------------------------------------ where the lock lives


def test_a_standby_is_refused_with_one_line(
    restartable_pg: EmbeddedPostgres, exporter_proc: StartExporter
) -> None:
    """A server in recovery cannot hold the leader's lock for the primary's replicas
    (advisory locks are per server): the exporter stops with one line naming the fix."""
    restartable_pg.stop()
    (restartable_pg.pgdata / "standby.signal").touch()
    restartable_pg.start()
    replica = exporter_proc("--dsn", restartable_pg.dsn, *HA_FLAGS)
    assert replica.proc.wait(15) == 1
    errors = [line for line in replica.logs().splitlines() if " ERROR " in line]
    assert len(errors) == 1, replica.logs()
    assert "--ha-dsn reaches a standby (pg_is_in_recovery() is true)" in errors[0]
    assert "target_session_attrs=read-write" in errors[0]


async def test_a_follower_reports_its_lock_database_and_both_recover_after_an_outage(
    restartable_pg: EmbeddedPostgres, exporter_proc: StartExporter
) -> None:
    """tw_up on a follower means its lock connection's database answered: 0 while the
    server is down, 1 again after; the group elects a leader again without help."""
    conn = await asyncpg.connect(restartable_pg.dsn)
    try:
        await dataset.create_schema(conn)
    finally:
        await conn.close()
    leader, follower = await two_replicas(exporter_proc, restartable_pg.dsn)
    restartable_pg.stop()

    async def down(process: ExporterProcess) -> bool:
        return value(await scrape(process), "tw_up") == 0

    await wait_until(lambda: down(follower), timeout=10)
    await wait_until(lambda: down(leader), timeout=10)
    assert not has_business(await scrape(follower))
    restartable_pg.start()

    async def one_leader_again() -> bool:
        roles = {await leader_of(leader), await leader_of(follower)}
        return roles == {0.0, 1.0}

    await wait_until(one_leader_again, timeout=15)
    new_leader, new_follower = (
        (leader, follower) if await leader_of(leader) == 1 else (follower, leader)
    )
    await wait_until(lambda: serves_fresh_data_as_leader(new_leader), timeout=10)
    await wait_until(lambda: is_follower(new_follower), timeout=10)


# ------------------------------------------------------------------ behind a pooler


@pytest.fixture
def round_robin_transaction_bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode handing out its server connections in turn (FIFO), so
    two consecutive statements of one client land on different backends."""
    with run_pgbouncer(
        pg_server.dsn, "transaction", default_pool_size="4", server_round_robin="1"
    ) as bouncer:
        yield bouncer


async def test_a_transaction_pooler_on_the_lock_path_is_refused_with_one_line(
    round_robin_transaction_bouncer: PgBouncer, seeded_db: str, exporter_proc: StartExporter
) -> None:
    bouncer = round_robin_transaction_bouncer
    ha_dsn = bouncer.dsn_for(seeded_db)
    # Two server connections in the pool: two clients in a transaction at the same time.
    first, second = await asyncpg.connect(ha_dsn), await asyncpg.connect(ha_dsn)
    try:
        for conn in (first, second):
            await conn.execute("BEGIN")
            await conn.execute("SELECT 1")
        for conn in (first, second):
            await conn.execute("COMMIT")
    finally:
        await first.close()
        await second.close()
    replica = exporter_proc("--dsn", seeded_db, "--ha-dsn", ha_dsn, *HA_FLAGS)
    assert replica.proc.wait(15) == 1
    errors = [line for line in replica.logs().splitlines() if " ERROR " in line]
    assert len(errors) == 1, replica.logs()
    assert "--ha-dsn goes through a transaction pooler" in errors[0]
    assert "connect it to PostgreSQL directly or through a session pooler" in errors[0]


@pytest.mark.parametrize("mode", ["transaction", "statement"])
async def test_ha_through_a_pooler_that_shares_backends_is_refused(
    mode: str, pg_server: PgServer, seeded_db: str, exporter_proc: StartExporter
) -> None:
    """The issue's set-up: --dsn (so also the lock) through a stock transaction pooler, which
    happened to keep the lock session on one backend, so the check at election passed and the
    replica flapped leader every few seconds. Now refused before campaigning, one line."""
    with run_pgbouncer(pg_server.dsn, mode) as bouncer:
        replica = exporter_proc("--dsn", bouncer.dsn_for(seeded_db), *HA_FLAGS)
        listening = time.monotonic()
        assert replica.proc.wait(15) == 1
        print(f"{mode} pooler: exit 1 {time.monotonic() - listening:.2f}s after listening")
    logs = replica.logs()
    errors = [line for line in logs.splitlines() if " ERROR " in line]
    assert len(errors) == 1, logs
    assert "--ha-dsn goes through a transaction pooler" in errors[0], logs
    assert "elected leader" not in logs, logs
    assert "Traceback" not in logs and "AttributeError" not in logs, logs


async def test_a_session_pooler_on_the_lock_path_works(
    pg_server: PgServer, seeded_db: str, exporter_proc: StartExporter
) -> None:
    with run_pgbouncer(pg_server.dsn, "session", server_round_robin="1") as bouncer:
        replica = exporter_proc(
            "--dsn", seeded_db, "--ha-dsn", bouncer.dsn_for(seeded_db), *HA_FLAGS
        )
        await wait_until(lambda: serves_fresh_data_as_leader(replica), timeout=15)
        assert replica.proc.poll() is None
