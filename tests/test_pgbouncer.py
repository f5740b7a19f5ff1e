"""The exporter behind a real PgBouncer, in ``transaction`` and ``session`` pooling modes.

In transaction mode consecutive transactions of one client may run on different server
connections, so nothing may depend on session state: these tests share few server connections
among many clients and check that every guarantee of a direct connection still holds (exact
numbers, read-only, the server-side timeout during a lock, no named prepared statement, no
setting left behind on a server connection) and that a database restart behind the pooler is
recovered from.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import asyncpg
import pytest

from exporter.collectors import COLLECTORS
from exporter.config.settings import query_params
from exporter.db.database import CLIENT_GRACE_SECONDS, Database, QueryError
from exporter.db.failures import FAILURE_REASONS
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import (
    REPO,
    PgServer,
    StartExporter,
    exporter_command,
    wait_until,
    wait_until_sync,
)
from tests.helpers import http_get, series, value
from tests.pgbouncer import PgBouncer, run_pgbouncer
from tests.rig import Rig, fill, fill_existing, make_rig

MODES = ("transaction", "session")
QUERIES = tuple(c.name for c in COLLECTORS)
TOP_USERS = next(c for c in COLLECTORS if c.name == "top_users")

pytestmark = pytest.mark.slow


# Server connections per database and user. Transaction mode: two, fewer than the exporter's
# three clients (and the eight of the concurrency test), so they really are shared. Session
# mode ties a server connection to each client for its lifetime, so it needs one per client:
# the exporter's pool holds up to three (one per query).
SERVERS = {"transaction": 2, "session": 3}


@pytest.fixture(params=MODES)
def bouncer(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[PgBouncer]:
    mode = request.param
    with run_pgbouncer(pg_server.dsn, mode, default_pool_size=str(SERVERS[mode])) as bouncer:
        yield bouncer


@pytest.fixture
def transaction_bouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    with run_pgbouncer(pg_server.dsn, "transaction", default_pool_size="2") as bouncer:
        yield bouncer


def run_check(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command("check", "--dsn", dsn),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


async def test_startup_parameters_are_what_pgbouncer_refuses(
    transaction_bouncer: PgBouncer, seeded_db: str
) -> None:
    """The failure this design avoids, shown on the same PgBouncer: a session setting sent at
    startup is refused, application_name is accepted."""
    dsn = transaction_bouncer.dsn_for(seeded_db)
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await asyncpg.connect(dsn, server_settings={"statement_timeout": "1000"})
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "tw-exporter"})
    await conn.close()


async def test_exporter_behind_pgbouncer_exports_exact_numbers(
    bouncer: PgBouncer, seeded_db: str, exporter_proc: StartExporter
) -> None:
    await fill_existing(seeded_db)
    dsn = bouncer.dsn_for(seeded_db)
    proc = exporter_proc("--interval", "0.5", env={"TW_EXPORTER_DSN": dsn})

    def collected_twice() -> bool:
        text = http_get(proc.url + "/metrics").text
        return all(
            (value(text, "tw_exporter_query_run_seconds_count", query=q) or 0) >= 2 for q in QUERIES
        )

    wait_until_sync(collected_twice)
    text = http_get(proc.url + "/metrics").text
    assert value(text, "tw_up") == 1
    assert series(text, "tw_user_followers") == {
        (("username", "ann"), ("verified", "false")): 7.0,
        (("username", "ben"), ("verified", "false")): 3.0,
    }
    assert series(text, "tw_hashtag_tweets") == {(("tag", "db"), ("window", "7d")): 1.0}
    assert value(text, "tw_platform_tweets", window="7d") == 2
    assert value(text, "tw_platform_active_users", window="7d") == 2
    assert value(text, "tw_platform_likes", window="7d") == 6
    assert value(text, "tw_platform_likes_per_tweet", window="7d") == 3
    errors = series(text, "tw_exporter_query_errors_total")
    assert len(errors) == len(QUERIES) * len(FAILURE_REASONS), errors
    assert set(errors.values()) == {0.0}, errors
    for query in QUERIES:
        runs = value(text, "tw_exporter_query_run_seconds_count", query=query)
        assert value(text, "tw_exporter_query_wait_seconds_count", query=query) == runs
        assert value(text, "tw_exporter_query_duration_seconds_count", query=query) == runs
    assert proc.stop() == 0
    assert "unsupported startup parameter" not in proc.logs()

    result = run_check(dsn)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check: ok" in result.stdout


async def test_guarantees_hold_with_shared_server_connections(
    bouncer: PgBouncer, seeded_db: str
) -> None:
    """200 concurrent queries (from 8 clients over 2 server connections in transaction mode):
    each one sees its own read-only transaction with the exporter's timeouts and
    application_name, no named prepared statement exists on any server connection, and
    nothing is left behind on them."""
    dsn = bouncer.dsn_for(seeded_db)
    servers = SERVERS[bouncer.pool_mode]
    clients = 8 if bouncer.pool_mode == "transaction" else servers
    database = Database(dsn, pool_size=clients, query_timeout=3.0)
    await database.open()
    probe = """
        SELECT $1::int + 1 AS n,
               current_setting('transaction_read_only') AS read_only,
               current_setting('statement_timeout') AS statement_timeout,
               current_setting('lock_timeout') AS lock_timeout,
               current_setting('application_name') AS application_name,
               (SELECT count(*) FROM pg_prepared_statements) AS prepared,
               pg_backend_pid() AS pid
    """
    try:
        results = await asyncio.gather(*(database.fetch(probe, [i]) for i in range(200)))
        with pytest.raises(QueryError, match="read-only transaction") as raised:
            await database.fetch("CREATE TABLE tw_written (id int)", [])
        assert raised.value.reason == "sql"
    finally:
        await database.close()
    rows = [result.rows[0] for result in results]
    assert [row["n"] for row in rows] == [i + 1 for i in range(200)]
    seen = {
        (r["read_only"], r["statement_timeout"], r["lock_timeout"], r["application_name"])
        for r in rows
    }
    assert seen == {("on", "3s", "3s", "tw-exporter")}
    assert {row["prepared"] for row in rows} == {0}
    assert len({row["pid"] for row in rows}) == servers  # every server connection was used
    # The server connections the exporter used carry none of its settings afterwards.
    plain = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        after = await plain.fetchrow(
            "SELECT current_setting('statement_timeout') AS st, "
            "current_setting('default_transaction_read_only') AS ro"
        )
    finally:
        await plain.close()
    assert (after["st"], after["ro"]) == ("0", "off")


async def test_named_statements_break_in_transaction_mode(
    transaction_bouncer: PgBouncer, seeded_db: str
) -> None:
    """The control for the test above: asyncpg's default (named, cached) statements on the
    same transaction pooler fail, so sharing server connections really is exercised."""
    pool = await asyncpg.create_pool(transaction_bouncer.dsn_for(seeded_db), min_size=8, max_size=8)
    assert pool is not None

    async def one(i: int) -> BaseException | None:
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.fetchval("SELECT $1::int + pg_backend_pid() * 0", i)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            return error
        return None

    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        pool.terminate()
    failures = [o for o in outcomes if o is not None]
    assert failures, "named prepared statements survived transaction pooling?"
    assert any("prepared statement" in str(f) for f in failures), failures[:3]


async def test_lock_times_out_on_the_server_behind_pgbouncer(
    bouncer: PgBouncer, seeded_db: str
) -> None:
    await fill_existing(seeded_db)
    database = Database(bouncer.dsn_for(seeded_db), pool_size=3, query_timeout=1.0)
    await database.open()
    locker = await asyncpg.connect(seeded_db)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
        started = time.perf_counter()
        with pytest.raises(QueryError) as raised:
            await database.fetch(TOP_USERS.sql, TOP_USERS.params(query_params()))
        elapsed = time.perf_counter() - started
        await transaction.rollback()
        # PostgreSQL cancelled it (lock_timeout or statement_timeout, both 1 s), well before
        # the client's own deadline (1 s later) would have.
        assert raised.value.reason == "timeout"
        assert str(raised.value).startswith(
            (
                "LockNotAvailableError: canceling statement due to lock timeout",
                "QueryCanceledError: canceling statement due to statement timeout",
            )
        ), raised.value
        assert 1.0 <= elapsed < 1.8, elapsed
        assert raised.value.wait_seconds is not None and raised.value.wait_seconds < 0.5
        assert raised.value.run_seconds is not None and raised.value.run_seconds >= 0.9
        # The lock is gone and the same pooler serves the query again.
        result = await database.fetch(TOP_USERS.sql, TOP_USERS.params(query_params()))
        assert [(r["username"], r["follower_count"]) for r in result.rows] == [
            ("ann", 7),
            ("ben", 3),
        ]
    finally:
        await locker.close()
        await database.close()


async def test_recovers_after_a_database_restart_behind_pgbouncer(
    restartable_pg: EmbeddedPostgres,
    rigs: list[Rig],
) -> None:
    await fill(restartable_pg.dsn)
    with run_pgbouncer(restartable_pg.dsn, "transaction") as bouncer:
        rig = await make_rig(bouncer.dsn_for(restartable_pg.dsn))
        rigs.append(rig)
        assert await rig.run_all() is True
        assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7

        restartable_pg.stop()
        assert await rig.run_all() is False
        assert value(rig.text, "tw_up") == 0
        # PgBouncer either refuses at once ("server login has been failing": connection) or
        # queues the client until its deadline (timeout); neither is an answer.
        assert unanswered(rig) == 1
        assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7

        restartable_pg.start()
        conn = await asyncpg.connect(restartable_pg.dsn)
        await conn.execute("UPDATE tw_users SET follower_count = 8 WHERE username = 'ann'")
        await conn.close()
        # PgBouncer retries the server login after server_login_retry (1 s here); until then
        # a run may still fail, after that every query answers with the new numbers. run_all
        # alone is not enough: it is true once any query answered, and top_users (whose numbers
        # are read below) may be the one still waiting for a server connection.
        cycles = 0  # top_users' runs that failed meanwhile
        deadline = time.monotonic() + 15
        names = [c.name for c in COLLECTORS]
        while True:
            answers = dict(
                zip(names, await asyncio.gather(*map(rig.collector.run_query, names)), strict=True)
            )
            if all(answers.values()):
                break
            cycles += not answers["top_users"]
            assert time.monotonic() < deadline, rig.text
        assert value(rig.text, "tw_up") == 1
        assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 8
        assert rig.errors("top_users", "sql") == 0
        assert unanswered(rig) == 1 + cycles


def unanswered(rig: Rig) -> float:
    """top_users' runs that got no answer: refused by the pooler or queued past the deadline."""
    return rig.errors("top_users", "connection") + rig.errors("top_users", "timeout")


async def test_session_mode_with_too_few_server_connections_ends_at_the_deadline(
    pg_server: PgServer, seeded_db: str
) -> None:
    """Session pooling with two server connections for three clients: the third query waits
    for a server until its client deadline, counts as ``timeout`` like every client deadline
    (issue 16), with all that time observed as waiting for a server connection, and its
    connection is dropped rather than left queued, so the next run does the same instead of
    hanging."""
    with run_pgbouncer(pg_server.dsn, "session", default_pool_size="2") as bouncer:
        database = Database(bouncer.dsn_for(seeded_db), pool_size=3, query_timeout=0.5)
        await database.open()
        try:
            for _ in range(2):
                started = time.perf_counter()
                outcomes = await asyncio.gather(
                    *(database.fetch("SELECT pg_sleep(0.1)", []) for _ in range(3)),
                    return_exceptions=True,
                )
                elapsed = time.perf_counter() - started
                failed = [o for o in outcomes if isinstance(o, BaseException)]
                assert len(failed) == 1, outcomes
                assert isinstance(failed[0], QueryError) and failed[0].reason == "timeout"
                assert not failed[0].answered  # the pooler never gave it a server
                # It never got a server connection: the whole deadline was waiting for one.
                assert failed[0].wait_seconds is not None and failed[0].wait_seconds >= 1.4
                assert failed[0].run_seconds is None
                assert elapsed < 0.5 + 1.0 + 0.5, elapsed  # the client deadline, not later
        finally:
            await database.close()


async def test_a_saturated_pooler_shows_as_wait_not_run(
    pg_server: PgServer, seeded_db: str
) -> None:
    """One server connection behind transaction pooling: while a slow statement holds it, a
    quick one queues in PgBouncer. The quick one's time is wait (its first round trip), not
    run; the slow one's is run, not wait."""
    with run_pgbouncer(pg_server.dsn, "transaction", default_pool_size="1") as bouncer:
        database = Database(bouncer.dsn_for(seeded_db), pool_size=2, query_timeout=5.0)
        await database.open()
        try:
            await database.fetch("SELECT 1", [])  # the server connection exists
            slow_started = time.perf_counter()
            slow = asyncio.create_task(database.fetch("SELECT pg_sleep(1)", []))
            observer = await asyncpg.connect(seeded_db)
            try:

                async def sleeping() -> bool:
                    return bool(
                        await observer.fetchval(
                            "SELECT count(*) FROM pg_stat_activity "
                            "WHERE state = 'active' AND query = 'SELECT pg_sleep(1)'"
                        )
                    )

                await wait_until(sleeping, timeout=5)
            finally:
                await observer.close()
            # The slow statement has slept at most this long when the quick one queues, so
            # the quick one waits at least the rest of its second (however long noticing took).
            slept = time.perf_counter() - slow_started
            quick = await database.fetch("SELECT 1", [])
            slow_result = await slow
        finally:
            await database.close()
    assert slow_result.run_seconds >= 0.9 and slow_result.wait_seconds < 0.5, slow_result
    assert quick.wait_seconds >= 1.0 - slept - 0.1 and quick.run_seconds < 0.5, (quick, slept)
    assert quick.wait_seconds > quick.run_seconds, quick


async def test_check_behind_a_full_session_pooler_fails_at_its_deadlines(
    pg_server: PgServer, seeded_db: str
) -> None:
    """Session pooling whose one server connection another client holds: every statement of
    ``check`` queues in PgBouncer for a server that never comes. Each fails at its client
    deadline (``--query-timeout`` plus a second), which the output names, and ``check`` ends
    in seconds, not at PgBouncer's ``query_wait_timeout`` (120 s)."""
    query_timeout = 0.5
    with run_pgbouncer(pg_server.dsn, "session", default_pool_size="1") as bouncer:
        dsn = bouncer.dsn_for(seeded_db)
        holder = await asyncpg.connect(dsn)
        try:
            assert await holder.fetchval("SELECT 1") == 1  # its session owns the server now
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exporter",
                "check",
                "--dsn",
                dsn,
                "--query-timeout",
                str(query_timeout),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                output, _ = await asyncio.wait_for(proc.communicate(), 60)
            except TimeoutError:
                proc.kill()
                raise AssertionError("check still waiting for a server after 60 s") from None
            elapsed = time.monotonic() - started
        finally:
            await holder.close()
    text = output.decode()
    assert proc.returncode == 1, text
    deadline = f"within {query_timeout + CLIENT_GRACE_SECONDS:g}s (client deadline)"
    assert f"schema: FAILED: no answer from the database {deadline}" in text, text
    for collector in COLLECTORS:
        assert f"query {collector.name}: FAILED (timeout)" in text, text
    # One deadline for the schema, one for each query, and the interpreter's start.
    assert elapsed < (1 + len(COLLECTORS)) * (query_timeout + CLIENT_GRACE_SECONDS) + 10, elapsed
