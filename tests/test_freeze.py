"""A database that stops answering (every process SIGSTOPped, as a paused VM or a hung volume
does): the client deadline holds, ``tw_up`` says so, nothing leaks, and it recovers.

Each test freezes a private cluster of its own (``frozen_pg``), thawed at teardown whatever
happens; never the shared server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from exporter.collectors import COLLECTORS, QUERY_NAMES
from exporter.db.database import APPLICATION_NAME, CLIENT_GRACE_SECONDS
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import StartExporter, wait_until, wait_until_sync
from tests.helpers import http_get, series, value
from tests.rig import Rig, fill, make_rig

QUERY_TIMEOUT = 1.0
DEADLINE = QUERY_TIMEOUT + CLIENT_GRACE_SECONDS
# The real exporter's freeze ends once every query has failed FAILED_RUNS times and the last
# good numbers are past --max-staleness; FREEZE_SECONDS is the deadline for that.
FREEZE_SECONDS = 10.0
FAILED_RUNS = 2
# Slack for a 2-core machine shared with other work: still far below FREEZE_SECONDS.
SLACK = 1.5
LAST_SUCCESS = "tw_exporter_query_last_success_timestamp_seconds"

FOLLOWERS = {
    (("username", "ann"), ("verified", "false")): 7.0,
    (("username", "ben"), ("verified", "false")): 3.0,
}


@pytest.fixture
async def rig(frozen_pg: EmbeddedPostgres) -> AsyncIterator[Rig]:
    await fill(frozen_pg.dsn)
    made = await make_rig(frozen_pg.dsn, query_timeout=QUERY_TIMEOUT)
    yield made
    frozen_pg.thaw()
    await made.database.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def timed_cycle(rig: Rig) -> tuple[bool, float]:
    started = time.monotonic()
    answered = await rig.run_all()
    return answered, time.monotonic() - started


async def test_deadline_holds_during_a_freeze_and_nothing_leaks(
    frozen_pg: EmbeddedPostgres, rig: Rig
) -> None:
    assert await rig.run_all() is True  # three pooled connections, idle
    pool = rig.database._pool
    assert pool is not None
    fds, tasks = open_fds(), len(asyncio.all_tasks())

    assert frozen_pg.freeze() >= 2  # the postmaster and its children
    # Queries on the pooled connections: no answer, so the deadline ends them.
    answered, seconds = await timed_cycle(rig)
    assert answered is False
    assert DEADLINE - 0.1 <= seconds < DEADLINE + SLACK, seconds
    assert value(rig.text, "tw_up") == 0
    for name in QUERY_NAMES:
        assert rig.errors(name, "timeout") == 1
        assert rig.errors(name, "connection") == 0
    # terminate() gave every slot back; no connection is left open to the frozen server.
    assert pool.get_size() == 0 and pool.get_idle_size() == 0
    # The next run connects afresh: the connect timeout (= --query-timeout) bounds it,
    # startup and authentication included (the kernel accepts, PostgreSQL never answers).
    answered, seconds = await timed_cycle(rig)
    assert answered is False
    assert seconds < QUERY_TIMEOUT + SLACK, seconds
    for name in QUERY_NAMES:
        assert rig.errors(name, "connection") == 1
        assert rig.errors(name, "timeout") == 1
    assert pool.get_size() == 0
    assert open_fds() <= fds
    assert len(asyncio.all_tasks()) <= tasks

    frozen_pg.thaw()
    assert await rig.run_all() is True
    assert value(rig.text, "tw_up") == 1
    assert series(rig.text, "tw_user_followers") == FOLLOWERS
    assert value(rig.text, "tw_platform_tweets", window="7d") == 2
    assert open_fds() == fds  # three connections again, as before the freeze
    # The backends of the terminated connections are gone once the server runs again.
    conn = await asyncpg.connect(frozen_pg.dsn)
    try:

        async def three_backends() -> bool:
            count = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                APPLICATION_NAME,
            )
            return bool(count == len(COLLECTORS))

        await wait_until(three_backends, timeout=10)
    finally:
        await conn.close()


async def test_server_errors_are_answers_and_client_deadlines_are_not(
    frozen_pg: EmbeddedPostgres, rig: Rig
) -> None:
    """tw_up follows the most recent attempt of each query: one query that the server
    answers with an error keeps tw_up at 1; once no query gets an answer, it is 0."""
    conn = await asyncpg.connect(frozen_pg.dsn)
    try:
        await conn.execute("ALTER TABLE tw_tweet_hashtags RENAME TO tw_tweet_hashtags_gone")
        await conn.execute("ALTER TABLE tw_users RENAME TO tw_users_gone")
        await conn.execute("ALTER TABLE tw_tweets RENAME TO tw_tweets_gone")
    finally:
        await conn.close()
    # Every query fails, but with the server's own error: the database answered.
    assert await rig.run_all() is True
    assert value(rig.text, "tw_up") == 1
    assert all(rig.errors(name, "sql") == 1 for name in QUERY_NAMES)

    frozen_pg.freeze()
    assert await rig.run_all() is False
    assert value(rig.text, "tw_up") == 0
    assert all(rig.errors(name, "timeout") == 1 for name in QUERY_NAMES)


def test_real_exporter_reports_a_freeze_within_seconds_and_recovers(
    frozen_pg: EmbeddedPostgres, exporter_proc: StartExporter
) -> None:
    asyncio.run(fill(frozen_pg.dsn))
    proc = exporter_proc(
        "--dsn", frozen_pg.dsn, "--interval", "1", "--query-timeout", str(QUERY_TIMEOUT)
    )

    def scrape() -> str:
        started = time.monotonic()
        text = http_get(proc.url + "/metrics", timeout=2).text
        scrape_seconds = time.monotonic() - started
        assert scrape_seconds < 0.5, scrape_seconds  # never waits for the database
        return text

    wait_until_sync(lambda: series(scrape(), "tw_user_followers") == FOLLOWERS)
    assert value(scrape(), "tw_up") == 1

    def failed_runs(text: str, name: str) -> float:
        return sum(
            value(text, "tw_exporter_query_errors_total", query=name, reason=reason) or 0
            for reason in ("timeout", "connection")
        )

    frozen_at = time.monotonic()
    frozen_pg.freeze()
    down_after: float | None = None
    scrapes = 0
    # Frozen until every query has failed FAILED_RUNS times (tw_up is seen held at 0 across
    # runs, not only after the first) and the last good numbers are past --max-staleness.
    while True:
        text = scrape()
        scrapes += 1
        up = value(text, "tw_up")
        if down_after is None and up == 0:
            down_after = time.monotonic() - frozen_at
        elif down_after is not None:
            assert up == 0, "tw_up went back to 1 while the database was frozen"
        if (
            down_after is not None
            and all(failed_runs(text, name) >= FAILED_RUNS for name in QUERY_NAMES)
            and not series(text, "tw_user_followers")
        ):
            break
        failed = {name: failed_runs(text, name) for name in QUERY_NAMES}
        assert time.monotonic() - frozen_at < FREEZE_SECONDS, (up, failed, scrapes)
        time.sleep(0.1)  # a scrape cadence, not synchronisation
    assert down_after is not None, "tw_up stayed 1 during the freeze"
    # At most one interval until the next run, then the deadline.
    assert down_after < 1.0 + DEADLINE + SLACK, down_after
    for name in QUERY_NAMES:
        assert value(text, "tw_exporter_query_errors_total", query=name, reason="timeout") >= 1
    # Past --max-staleness (3 x interval) without a success: no stale numbers served.
    assert not series(text, "tw_user_followers")
    last_success = {name: value(text, LAST_SUCCESS, query=name) for name in QUERY_NAMES}

    thawed_at = time.monotonic()
    frozen_pg.thaw()

    def recovered() -> bool:
        # Each query runs on its own schedule (#12): wait for a new success of every one.
        text = scrape()
        return value(text, "tw_up") == 1 and all(
            value(text, LAST_SUCCESS, query=name) != last_success[name] for name in QUERY_NAMES
        )

    wait_until_sync(recovered, timeout=10)
    up_after = time.monotonic() - thawed_at
    text = scrape()
    assert series(text, "tw_user_followers") == FOLLOWERS
    assert value(text, "tw_platform_tweets", window="7d") == 2
    assert value(text, "tw_platform_likes", window="7d") == 6
    print(
        f"freeze: tw_up 0 after {down_after:.2f}s, back to 1 {up_after:.2f}s after the thaw "
        f"({scrapes} scrapes during the freeze)"
    )
    assert proc.stop(signal.SIGTERM) == 0


async def test_sigterm_with_a_query_stuck_on_a_frozen_server_exits_within_the_grace(
    frozen_pg: EmbeddedPostgres, exporter_proc: StartExporter
) -> None:
    await fill(frozen_pg.dsn)
    locker = await asyncpg.connect(frozen_pg.dsn)
    watcher = await asyncpg.connect(frozen_pg.dsn)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
        # A long deadline: only shutdown can end the stuck query within this test.
        proc = exporter_proc("--dsn", frozen_pg.dsn, "--interval", "30", "--query-timeout", "20")

        async def waiting_on_the_lock() -> bool:
            count = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                APPLICATION_NAME,
            )
            return bool(count == 1)

        await wait_until(waiting_on_the_lock, timeout=10)
        frozen_pg.freeze()  # the query is in flight; its cancel and rollback get no answer
        started = time.monotonic()
        assert await asyncio.to_thread(proc.stop, signal.SIGTERM, 10) == 0
        # SHUTDOWN_GRACE (1 s) for the cycle, 1 s for the pool, then sockets are closed.
        assert time.monotonic() - started < 4.0
        assert "shutting down" in proc.logs()
    finally:
        frozen_pg.thaw()
        await watcher.close()
        await locker.close()
