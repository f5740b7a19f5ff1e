"""The database moving under a running exporter (issue 23): its schema migrated, its server
closing idle sessions, too few connection slots left, a column of the wrong type. Each test
drives ``Collector.run_query``, the function the scheduler's job runs, against a real
PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exporter.collectors import COLLECTORS, platform_stats, top_users, trending_hashtags
from tests.conftest import StartExporter, wait_until
from tests.helpers import execute, series, value
from tests.rig import UUID_MIGRATION, Rig, fill_existing, make_rig


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def errors(rig: Rig, query: str) -> dict[str, float]:
    found = series(rig.text, "tw_exporter_query_errors_total")
    return {
        dict(labels)["reason"]: count
        for labels, count in found.items()
        if dict(labels)["query"] == query and count
    }


# ------------------------------------------------------------------ schema migration


async def test_trending_recovers_at_its_next_run_after_ids_move_to_uuid(
    seeded_db: str, rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """The trending query's shape is detected once per connection; after ``tw_tweets.id``
    moved from bigint to uuid the id-range shape fails ("operator does not exist: uuid +
    integer"): the server's answer makes the exporter detect the shape again and retry, so the
    first run after the migration already succeeds (it used to fail until the 300 s
    connection recycle)."""
    await fill_existing(seeded_db)
    rig = await make_rig(seeded_db)
    rigs.append(rig)
    caplog.set_level(logging.DEBUG, logger="exporter")
    for _ in range(2):  # the shape is memoised on the connection the query reuses
        assert await rig.collector.run_query("trending_hashtags") is True
    assert "id-range (tw_tweets.id is bigint" in caplog.text
    assert value(rig.text, "tw_hashtag_tweets", tag="db", window="7d") == 1

    await execute(seeded_db, UUID_MIGRATION)
    caplog.clear()
    started = time.perf_counter()
    assert await rig.collector.run_query("trending_hashtags") is True
    print(f"first run after the migration: ok in {(time.perf_counter() - started) * 1000:.0f} ms")
    assert errors(rig, "trending_hashtags") == {}, caplog.text
    assert value(rig.text, "tw_hashtag_tweets", tag="db", window="7d") == 1
    assert "window-join (tw_tweets.id is uuid, not an integer)" in caplog.text
    assert "the statement no longer fits the schema (UndefinedFunctionError" in caplog.text
    # Detected again once, not on every run.
    caplog.clear()
    assert await rig.collector.run_query("trending_hashtags") is True
    assert "query shape of trending_hashtags" not in caplog.text
    assert errors(rig, "trending_hashtags") == {}


async def test_a_statement_that_never_fits_is_retried_once_and_counted_as_sql(
    seeded_db: str, rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """A column gone for good fails both shapes: one re-detection and retry, then ``sql``."""
    await execute(seeded_db, "ALTER TABLE tw_tweet_hashtags RENAME COLUMN hashtag_id TO tag_id")
    rig = await make_rig(seeded_db)
    rigs.append(rig)
    caplog.set_level(logging.DEBUG, logger="exporter")
    assert await rig.collector.run_query("trending_hashtags") is True  # the server answered
    assert errors(rig, "trending_hashtags") == {"sql": 1}
    assert caplog.text.count("no longer fits the schema") == 1


# ------------------------------------------------------------------ idle_session_timeout

IDLE_SESSION_TIMEOUT_MS = 100
RUNS = 50  # at least this many runs, all answered
RACE_DEADLINE = 60.0  # then runs go on until the race happened, for at most this long


async def test_a_connection_the_server_closed_idle_is_retried_and_never_counted_as_sql(
    seeded_db: str,
    rigs: list[Rig],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``idle_session_timeout`` just under the time between runs: the server closes the pooled
    connection just as it is reused, and asyncpg reports whatever state it was in (often an
    ``InternalClientError``). The attempt's connection is then closed, so it is a connection
    failure, retried once on a fresh connection: every run succeeds. The idle time sweeps
    across the timeout so the race happens in some of the runs (about one in four on an idle
    machine); on a busy one the timing is looser, so the runs go on until it happened."""
    name = database_name(seeded_db)
    await execute(
        seeded_db, f'ALTER DATABASE "{name}" SET idle_session_timeout = {IDLE_SESSION_TIMEOUT_MS}'
    )
    rig = await make_rig(seeded_db, collectors=(platform_stats.COLLECTOR,))
    rigs.append(rig)
    caplog.set_level(logging.DEBUG, logger="exporter.db")
    # Each run renders at once, so the connection's idle time is the sleep below.
    rig.collector.render_gap = 0.0
    deadline = time.monotonic() + RACE_DEADLINE
    runs = 0
    while runs < RUNS or not caplog.text.count("its pooled connection was closed"):
        assert time.monotonic() < deadline, f"the race never happened in {runs} runs"
        answered = await rig.collector.run_query("platform_stats")
        assert answered is True, errors(rig, "platform_stats")
        # Idle times from 4 ms under the timeout to 4 ms over it, 0.4 ms apart.
        await asyncio.sleep((IDLE_SESSION_TIMEOUT_MS - 4 + (runs % 21) * 0.4) / 1000)
        runs += 1
    assert errors(rig, "platform_stats") == {}
    retried = caplog.text.count("its pooled connection was closed")
    print(f"{retried} of {runs} runs found their connection closed and were retried")


# ------------------------------------------------------------------ strict booleans


async def test_verified_must_be_a_real_boolean(seeded_db: str, rigs: list[Rig]) -> None:
    """A platform whose ``verified`` is text: 'false' is not exported as true (truthiness);
    every row that is not a boolean is skipped and the run counted under ``data``."""
    await execute(
        seeded_db,
        """
        ALTER TABLE tw_users ALTER COLUMN verified DROP DEFAULT;
        ALTER TABLE tw_users ALTER COLUMN verified TYPE text USING verified::text;
        INSERT INTO tw_users (username, follower_count, verified)
        VALUES ('ann', 7, 'false'), ('ben', 3, 'true');
        """,
    )
    rig = await make_rig(seeded_db, collectors=(top_users.COLLECTOR,))
    rigs.append(rig)
    assert await rig.collector.run_query("top_users") is True
    assert errors(rig, "top_users") == {"data": 1}
    assert series(rig.text, "tw_user_followers") == {}

    await execute(
        seeded_db, "ALTER TABLE tw_users ALTER COLUMN verified TYPE boolean USING verified::bool"
    )
    assert await rig.collector.run_query("top_users") is True
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7
    assert value(rig.text, "tw_user_followers", username="ben", verified="true") == 3
    assert errors(rig, "top_users") == {"data": 1}


def test_the_built_in_collectors_are_the_ones_tested_here() -> None:
    assert {c.name for c in COLLECTORS} == {
        top_users.COLLECTOR.name,
        trending_hashtags.COLLECTOR.name,
        platform_stats.COLLECTOR.name,
    }


# ------------------------------------------------------------------ a scarce pool


@pytest.fixture
async def one_slot_dsn(seeded_db: str) -> AsyncIterator[str]:
    """The test database through a role that may open one connection only (CONNECTION LIMIT
    1: the server's "too many connections" for the second), as when a server has one free
    slot left."""
    role = "tw_one_slot_" + database_name(seeded_db).rsplit("_", 1)[1]
    await execute(
        seeded_db,
        f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1;"
        f" GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
    )
    parts = urlsplit(seeded_db)
    host = parts.netloc.rsplit("@", 1)[-1]
    yield urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, ""))
    await execute(seeded_db, f"DROP OWNED BY {role}; DROP ROLE {role}")


ROUNDS = 4


async def test_one_free_connection_is_shared_by_every_query_in_turn(
    one_slot_dsn: str, seeded_db: str, rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """Three queries start together (as their jobs do) and the server takes one connection:
    the queries take turns on it in arrival order. It used to be the first to connect winning
    every round and the other two failing every round with ``connection``."""
    await fill_existing(seeded_db)
    rig = await make_rig(one_slot_dsn)
    rigs.append(rig)
    names = [c.name for c in COLLECTORS]
    for _ in range(ROUNDS):
        started = time.perf_counter()
        answered = await asyncio.gather(*(rig.collector.run_query(name) for name in names))
        assert answered == [True] * len(names)
        print(f"3 queries on one connection: all ok in {time.perf_counter() - started:.3f}s")
    for name in names:
        assert errors(rig, name) == {}, (name, caplog.text)
        assert value(rig.text, "tw_exporter_query_duration_seconds_count", query=name) == ROUNDS
    assert rig.database.connections() == 1
    assert caplog.text.count("the database refused another connection") == 1


# ------------------------------------------------------------------ an HA step-down


async def test_an_ha_step_down_cancels_the_runs_in_flight_with_one_line(
    exporter_proc: StartExporter, seeded_db: str
) -> None:
    """The leader's lock session is terminated while top_users waits on a lock: the replica
    steps down and cancels that run, logging it in one line, without a ``CancelledError``
    traceback from APScheduler's executor."""
    process = exporter_proc(
        "--dsn",
        seeded_db,
        "--ha",
        "--ha-lease",
        "3",
        "--interval",
        "1",
        "--query-timeout",
        "1",
    )
    database = database_name(seeded_db)
    holder = await asyncpg.connect(seeded_db)
    admin = await asyncpg.connect(seeded_db)
    try:
        await holder.execute("BEGIN; LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")

        async def waiting() -> bool:
            return bool(
                await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                    " AND application_name LIKE 'tw-exporter/%' AND wait_event_type = 'Lock'",
                    database,
                )
            )

        await wait_until(waiting)
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1"
            " AND application_name LIKE 'tw-exporter-ha/%'",
            database,
        )
        await wait_until(lambda: asyncio.sleep(0, "in flight: this replica" in process.logs()))
    finally:
        await holder.close()
        await admin.close()
    logs = process.logs()
    assert "no longer the leader of HA group" in logs
    assert re.search(r"cancelled \d query run\(s\) in flight: this replica is no longer", logs)
    assert "Traceback" not in logs and "CancelledError" not in logs, logs
    assert process.stop() == 0
