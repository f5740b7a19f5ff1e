"""The exporter on a real hot standby fed by streaming replication.

A private primary and a standby made from it with ``pg_basebackup -R`` run from the machine's
PostgreSQL 15 binaries (``pg_config --bindir``), as the ``postgres`` OS user when we are root.
The standby keeps PostgreSQL's defaults that make recovery conflicts possible
(``hot_standby_feedback = off``) with a short ``max_standby_streaming_delay``, so a lock taken
on the primary cancels a standby query at once: SQLSTATE 40001, counted under ``conflict``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections.abc import Iterator

import asyncpg
import pytest

from exporter.collectors import COLLECTORS
from exporter.config.settings import query_params
from exporter.db.database import Database
from tests.conftest import REPO, exporter_command, wait_until
from tests.helpers import free_port, value
from tests.pg_cluster import STANDBY_DELAY_MS, Pair, replayed, replication_pair
from tests.rig import Rig, fill, make_rig

TOP_USERS = next(c for c in COLLECTORS if c.name == "top_users")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with replication_pair() as made:
        yield made


@pytest.fixture(scope="module")
def seeded_pair(pair: Pair) -> Pair:
    async def seed() -> None:
        await fill(pair.primary)
        await replayed(pair)

    asyncio.run(seed())
    return pair


async def test_exporter_on_the_standby_exports_the_primarys_numbers(
    seeded_pair: Pair,
    rigs: list[Rig],
) -> None:
    pair = seeded_pair
    rig = await make_rig(pair.standby)
    rigs.append(rig)
    assert await rig.run_all() is True
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 7
    assert value(rig.text, "tw_platform_tweets", window="7d") == 2

    primary = await asyncpg.connect(pair.primary)
    try:
        await primary.execute("UPDATE tw_users SET follower_count = 70 WHERE username = 'ann'")
    finally:
        await primary.close()
    await replayed(pair)
    assert await rig.run_all() is True
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") == 70
    for reason in ("timeout", "connection", "conflict", "sql"):
        assert rig.errors("top_users", reason) == 0


async def test_recovery_conflict_is_counted_as_conflict_and_the_next_run_recovers(
    seeded_pair: Pair,
    rigs: list[Rig],
) -> None:
    """A lock taken on the primary conflicts with the standby query holding the table: after
    max_standby_streaming_delay replay cancels the query with SQLSTATE 40001. The query is the
    real top_users SQL with a sleep joined in, so it is still running when the lock arrives."""
    pair = seeded_pair
    slow = dataclasses.replace(
        TOP_USERS, sql=f"SELECT q.* FROM ({TOP_USERS.sql}) AS q, (SELECT pg_sleep(2)) AS s"
    )
    rig = await make_rig(pair.standby, query_timeout=8.0, collectors=(slow,))
    rigs.append(rig)
    cycle = asyncio.create_task(rig.run_all())
    standby = await asyncpg.connect(pair.standby)
    primary = await asyncpg.connect(pair.primary)
    try:

        async def running() -> bool:
            return bool(
                await standby.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND application_name = 'tw-exporter' AND query LIKE '%pg_sleep%'"
                )
            )

        await wait_until(running, timeout=5)
        async with primary.transaction():
            await primary.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
        assert await asyncio.wait_for(cycle, 1.5) is True  # cancelled before the sleep ends
    finally:
        await standby.close()
        await primary.close()
    assert rig.errors("top_users", "conflict") == 1
    for reason in ("timeout", "connection", "sql"):
        assert rig.errors("top_users", reason) == 0

    # The next run, with nothing in its way, succeeds.
    assert await rig.run_all() is True
    assert rig.errors("top_users", "conflict") == 1
    assert value(rig.text, "tw_user_followers", username="ann", verified="false") is not None


def test_check_says_standby_and_warns_about_conflicts(seeded_pair: Pair) -> None:
    def check(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            exporter_command("check", "--dsn", seeded_pair.standby, *args),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )

    warned = check("--query-timeout", "5")
    assert warned.returncode == 0, warned.stdout + warned.stderr
    assert (
        "server: WARNING: hot standby with hot_standby_feedback off and "
        f"max_standby_streaming_delay {STANDBY_DELAY_MS}ms below the query timeout (5s)"
    ) in warned.stdout
    assert "check: ok" in warned.stdout
    primary = subprocess.run(
        exporter_command("check", "--dsn", seeded_pair.primary),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert "server: ok (primary)" in primary.stdout, primary.stdout


# ------------------------------------------------------------------ multi-host DSNs


def _hosts(*ports: int, attrs: str) -> str:
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    return f"postgresql://postgres@{hosts}/postgres?target_session_attrs={attrs}"


IN_RECOVERY = "SELECT pg_is_in_recovery() AS standby, current_setting('port') AS port"


async def test_multi_host_dsn_skips_a_host_that_is_down(seeded_pair: Pair) -> None:
    down = free_port()  # nothing listens here
    database = Database(
        _hosts(down, seeded_pair.primary_port, attrs="any"), pool_size=3, query_timeout=5.0
    )
    await database.open()
    try:
        result = await database.fetch(TOP_USERS.sql, TOP_USERS.params(query_params()))
        where = await database.fetch(IN_RECOVERY, [])
    finally:
        await database.close()
    assert [r["username"] for r in result.rows] == ["ann", "ben"]
    assert where.rows[0]["port"] == str(seeded_pair.primary_port)


async def test_prefer_standby_falls_back_and_drifts_back_to_the_standby(
    seeded_pair: Pair,
) -> None:
    """``prefer-standby`` over primary and standby: the standby while it is up, the primary
    while it is down, and the standby again once it is back and the pool has recycled its
    connections (here after 0.5 s; the exporter's default is MAX_CONNECTION_AGE)."""
    pair = seeded_pair
    dsn = _hosts(pair.primary_port, pair.standby_port, attrs="prefer-standby")
    database = Database(dsn, pool_size=1, query_timeout=5.0, max_connection_age=0.5)
    await database.open()

    async def on_standby() -> bool:
        return bool((await database.fetch(IN_RECOVERY, [])).rows[0]["standby"])

    try:
        assert await on_standby() is True
        pair.stop_standby()
        try:
            # The pooled connection died with the standby; the retry connects to the primary.
            assert await on_standby() is False
            result = await database.fetch(TOP_USERS.sql, TOP_USERS.params(query_params()))
            assert [r["username"] for r in result.rows] == ["ann", "ben"]
        finally:
            pair.start_standby()
        await wait_until(on_standby, timeout=15, interval=0.2)
    finally:
        await database.close()
