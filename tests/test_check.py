"""``tw-exporter check`` as an init step: exit 0 only when the exporter would work."""

from __future__ import annotations

import subprocess

import asyncpg
import pytest

from exporter.ops.check import server_role
from tests.conftest import exporter_command


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command("check", *args), capture_output=True, text=True, timeout=60
    )


async def test_check_passes_on_a_ready_database(seeded_db: str) -> None:
    result = check("--dsn", seeded_db)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in (
        "connect: ok",
        "server: ok (primary)",
        "schema: ok",
        # Empty tables: nothing contradicts time-ordered ids, so the fast shape.
        "shape trending_hashtags: id-range (tw_tweets.id is bigint and grows with created_at)",
        "query top_users: ok",
        "query trending_hashtags: ok",
        "query platform_stats: ok",
        "check: ok",
    ):
        assert line in out


async def test_check_names_a_missing_table_and_column(seeded_db: str) -> None:
    conn = await asyncpg.connect(seeded_db)
    await conn.execute("DROP TABLE tw_tweet_hashtags; ALTER TABLE tw_users DROP COLUMN verified")
    await conn.close()
    result = check("--dsn", seeded_db)
    assert result.returncode == 1
    assert "table tw_tweet_hashtags is missing" in result.stdout
    assert "table tw_users lacks column(s) verified" in result.stdout
    assert "query top_users: FAILED (sql)" in result.stdout
    assert "query platform_stats: ok" in result.stdout


def test_check_reports_an_unreachable_database_without_the_password() -> None:
    result = check("--dsn", "postgresql://tw:n0t-shown-pw@127.0.0.1:1/tw", "--interval", "2")
    assert result.returncode == 1
    assert "connect: FAILED" in result.stdout
    assert "n0t-shown-pw" not in result.stdout + result.stderr


def test_check_rejects_bad_settings_with_exit_2() -> None:
    result = check("--dsn", "postgresql://h/db", "--top-users", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("tw-exporter: error: --top-users")


@pytest.mark.parametrize(
    ("feedback", "delay_ms", "query_timeout", "expected"),
    [
        (False, 30_000, 10.0, "server: ok (hot standby; hot_standby_feedback off, "
         "max_standby_streaming_delay 30000ms)"),
        (False, 10_000, 10.0, "server: ok (hot standby; hot_standby_feedback off, "
         "max_standby_streaming_delay 10000ms)"),
        (False, -1, 10.0, "server: ok (hot standby; hot_standby_feedback off, "
         "max_standby_streaming_delay -1 (unlimited))"),
        (True, 100, 10.0, "server: ok (hot standby; hot_standby_feedback on, "
         "max_standby_streaming_delay 100ms)"),
        (False, 9_999, 10.0, "server: WARNING: hot standby with hot_standby_feedback off and "
         "max_standby_streaming_delay 9999ms below the query timeout (10s)"),
    ],
)  # fmt: skip
def test_server_role_warns_only_when_replay_can_cancel_a_query_in_time(
    feedback: bool, delay_ms: int, query_timeout: float, expected: str
) -> None:
    line = server_role(True, feedback, delay_ms, query_timeout)
    assert line.startswith(expected), line
    assert ("WARNING" in line) == line.startswith("server: WARNING")
    assert server_role(False, feedback, delay_ms, query_timeout) == "server: ok (primary)"


async def test_check_fails_rows_the_exporter_could_not_serve(seeded_db: str) -> None:
    """``check`` maps the rows as ``run`` does: a ``verified`` column of text ('false') is a
    ``data`` failure there (it used to say ok while ``run`` exported 'false' as true)."""
    conn = await asyncpg.connect(seeded_db)
    await conn.execute(
        "ALTER TABLE tw_users ALTER COLUMN verified DROP DEFAULT;"
        " ALTER TABLE tw_users ALTER COLUMN verified TYPE text USING verified::text;"
        " INSERT INTO tw_users (username, follower_count, verified) VALUES ('ann', 7, 'false')"
    )
    await conn.close()
    result = check("--dsn", seeded_db)
    assert result.returncode == 1, result.stdout
    assert (
        "query top_users: FAILED (data): 1 row(s) skipped: tw_users.verified must be a boolean, "
        "got 'false' (str)"
    ) in result.stdout
    assert "query platform_stats: ok" in result.stdout


async def test_check_runs_the_trending_query_in_the_shape_of_a_migrated_schema(
    seeded_db: str,
) -> None:
    """After ``tw_tweets.id`` moved to uuid, ``check`` names the new shape and runs it the way
    ``run`` does (the statement resolved on the connection it runs on)."""
    from tests.rig import UUID_MIGRATION

    conn = await asyncpg.connect(seeded_db)
    await conn.execute(UUID_MIGRATION)
    await conn.close()
    result = check("--dsn", seeded_db)
    assert result.returncode == 0, result.stdout
    assert "shape trending_hashtags: window-join (tw_tweets.id is uuid, not an integer)" in (
        result.stdout
    )
    assert "query trending_hashtags: ok" in result.stdout
