"""A database that is down, restarted, locked, slow or missing a table never crashes the
exporter or makes it serve wrong numbers; it recovers on its own."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from exporter.collectors import COLLECTORS
from exporter.collectors.base import QueryCollector
from exporter.config.queries_file import QueriesConfig, Schedule, builtin_definition
from exporter.expose.http import MetricsServer
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import StartExporter, wait_until, wait_until_sync
from tests.helpers import ahttp_get, http_get, samples, series, value
from tests.rig import Rig, fill, fill_existing, make_rig


async def test_down_at_start_then_recovers(
    restartable_pg: EmbeddedPostgres, rigs: list[Rig]
) -> None:
    restartable_pg.stop()
    rig = await make_rig(restartable_pg.dsn)  # creating the exporter needs no database
    rigs.append(rig)
    assert await rig.run_all() is False
    assert value(rig.text, "tw_up") == 0
    for collector in COLLECTORS:
        assert rig.errors(collector.name, "connection") == 1
        assert rig.errors(collector.name, "sql") == 0
    assert not series(rig.text, "tw_user_followers")
    assert not rig.store.ready

    restartable_pg.start()
    await fill(restartable_pg.dsn)
    assert await rig.run_all() is True
    assert value(rig.text, "tw_up") == 1
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7
    assert rig.store.ready


async def test_restart_keeps_last_good_data_then_recovers_in_one_cycle(
    restartable_pg: EmbeddedPostgres, rigs: list[Rig]
) -> None:
    await fill(restartable_pg.dsn)
    rig = await make_rig(restartable_pg.dsn)
    rigs.append(rig)
    assert await rig.run_all() is True

    restartable_pg.stop()
    assert await rig.run_all() is False
    assert value(rig.text, "tw_up") == 0
    # Within --max-staleness the last good numbers stay, flagged by tw_up and the counters.
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7
    assert rig.errors("top_users", "connection") == 1

    restartable_pg.start()
    # The pooled connections died with the server; the first cycle after the restart
    # must still succeed (one retry on a fresh connection).
    assert await rig.run_all() is True
    assert value(rig.text, "tw_up") == 1
    assert rig.errors("top_users", "connection") == 1


async def test_lock_times_out_one_query_and_scrapes_stay_instant(
    seeded_db: str, rigs: list[Rig]
) -> None:
    await fill_existing(seeded_db)
    rig = await make_rig(seeded_db, query_timeout=1.5)
    rigs.append(rig)
    assert await rig.run_all() is True

    server = MetricsServer(rig.store)
    host, port = (await server.start("127.0.0.1", 0))[0]
    locker = await asyncpg.connect(seeded_db)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
        cycle = asyncio.create_task(rig.run_all())

        async def top_users_waiting() -> bool:
            # Inside the locker's transaction pg_stat_activity is a snapshot: refresh it.
            await locker.execute("SELECT pg_stat_clear_snapshot()")
            return bool(
                await locker.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name = 'tw-exporter'"
                )
            )

        await wait_until(top_users_waiting, timeout=5)
        # The query is hung on the lock right now; a scrape must not wait for it.
        started = time.perf_counter()
        response = await ahttp_get(f"http://{host}:{port}/metrics")
        scrape_seconds = time.perf_counter() - started
        assert response.status == 200
        assert not cycle.done()
        assert scrape_seconds < 0.5, scrape_seconds
        assert await cycle is True  # the other two queries reached the database
    finally:
        await locker.close()
        await server.close()
    assert rig.errors("top_users", "timeout") == 1
    assert rig.errors("trending_hashtags", "timeout") == 0
    assert value(rig.text, "tw_up") == 1
    # The failed query keeps its last good series (not stale yet); the others refreshed.
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7


async def test_missing_table_fails_only_the_queries_that_need_it(
    seeded_db: str, rigs: list[Rig]
) -> None:
    await fill_existing(seeded_db)
    conn = await asyncpg.connect(seeded_db)
    await conn.execute("DROP TABLE tw_tweet_hashtags")
    await conn.close()
    rig = await make_rig(seeded_db)
    rigs.append(rig)
    assert await rig.run_all() is True
    assert rig.errors("trending_hashtags", "sql") == 1
    assert rig.errors("top_users", "sql") == 0
    assert rig.errors("platform_stats", "sql") == 0
    assert value(rig.text, "tw_platform_tweets", window="7d") == 2
    assert value(rig.text, "tw_user_followers", username="ben", verified="false") == 3
    assert not series(rig.text, "tw_hashtag_tweets")
    assert value(rig.text, "tw_up") == 1
    assert rig.store.stale_queries() == ["trending_hashtags"]


async def test_failed_query_series_expire_after_max_staleness(
    seeded_db: str, rigs: list[Rig]
) -> None:
    await fill_existing(seeded_db)
    rig = await make_rig(seeded_db)
    now = [1000.0]
    rig.store._clock = lambda: now[0]  # a controllable monotonic clock
    assert await rig.run_all() is True
    rigs.append(rig)
    conn = await asyncpg.connect(seeded_db)
    await conn.execute("ALTER TABLE tw_users RENAME TO tw_users_gone")
    await conn.close()

    now[0] += rig.store.queries["top_users"].max_staleness - 1
    await rig.run_all()
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7
    now[0] += 2  # past --max-staleness since the last success
    await rig.run_all()
    assert not series(rig.text, "tw_user_followers")
    assert value(rig.text, "tw_platform_tweets", window="7d") == 2  # others still fresh
    assert rig.errors("top_users", "sql") == 2


async def test_cycles_never_overlap_and_skipped_ticks_are_counted(
    seeded_db: str, rigs: list[Rig]
) -> None:
    slow = QueryCollector(
        name="top_users",  # reuse a known query label; the SQL is a real, slow statement
        sql="SELECT pg_sleep(0.6) AS slept",
        tables={},
        metrics=(),
        params=lambda params: (),
        to_families=lambda rows, params: [],
    )
    # Ticks every 0.2 s, a run of 0.6 s under a 2 s timeout: a run outlasts its interval.
    # (The queries file would refuse a timeout above the interval; the schedule is set here.)
    config = QueriesConfig(None, (builtin_definition("top_users", Schedule(0.2, 2.0, 60.0)),))
    rig = await make_rig(seeded_db, collectors=(slow,), config=config)
    rigs.append(rig)
    running = 0
    most = 0
    original = rig.collector.run_query

    async def counting_run(name: str) -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await original(name)
        finally:
            running -= 1

    rig.collector.run_query = counting_run  # type: ignore[method-assign]
    scheduler, _ = rig.pipeline.start()
    try:

        async def two_cycles_and_skips() -> bool:
            skipped = value(rig.text, "tw_exporter_cycles_skipped_total", query="top_users")
            runs = rig.collector.runs_completed.get("top_users", 0)
            return runs >= 2 and (skipped or 0) >= 2

        await wait_until(two_cycles_and_skips, timeout=15)
    finally:
        scheduler.shutdown(wait=False)
    assert most == 1


def test_password_never_logged_or_exported_when_connections_fail(
    exporter_proc: StartExporter,
) -> None:
    password = "Pa55-w0rd-leak-check"
    proc = exporter_proc(
        "--interval",
        "0.5",
        "--log-level",
        "debug",
        env={"TW_EXPORTER_DSN": f"postgresql://tw:{password}@127.0.0.1:1/tw"},
    )
    wait_until_sync(lambda: "failed (connection)" in proc.logs())
    text = http_get(proc.url + "/metrics").text
    assert value(text, "tw_up") == 0
    assert samples(text)
    assert proc.stop() == 0
    logs = proc.logs()
    assert "***" in logs  # the redacted DSN is shown instead
    assert password not in logs
    assert password not in text
