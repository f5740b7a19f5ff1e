"""The real ``tw-exporter`` process end to end over HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import asyncpg

from exporter import __version__
from tests.conftest import StartExporter, exporter_command, wait_until, wait_until_sync
from tests.helpers import http_get, series, value

PASSWORD = "Sup3r-S3cret-pw"


async def _insert_basic(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO tw_users (id, username, follower_count, verified) VALUES
              (1, 'alice', 500, true), (2, 'bob', 300, false), (3, 'carol', NULL, false);
            INSERT INTO tw_tweets (id, user_id, like_count, created_at) VALUES
              (1, 1, 10, now() - interval '1 day'), (2, 2, NULL, now() - interval '2 days'),
              (3, 2, 4, now() - interval '30 days');
            INSERT INTO tw_hashtags (id, tag) VALUES (1, 'python'), (2, 'old');
            INSERT INTO tw_tweet_hashtags VALUES (1, 1), (2, 1), (3, 2);
            """
        )
    finally:
        await conn.close()


async def test_run_scrape_and_sigterm(seeded_db: str, exporter_proc: StartExporter) -> None:
    await _insert_basic(seeded_db)
    scheme, _, rest = seeded_db.partition("://")
    user_part, _, host_part = rest.rpartition("@")
    dsn = f"{scheme}://{user_part.split(':')[0]}:{PASSWORD}@{host_part}"
    assert PASSWORD in dsn  # trust auth ignores it; the point is that it is never shown
    proc = exporter_proc("--interval", "1", env={"TW_EXPORTER_DSN": dsn})

    def scraped_all() -> bool:
        # Each query runs on its own job: /readyz says when every one of them is served.
        text = http_get(proc.url + "/metrics").text
        ready = http_get(proc.url + "/readyz").status == 200
        return ready and value(text, "tw_platform_tweets", window="7d") == 2

    wait_until_sync(scraped_all)
    text = http_get(proc.url + "/metrics").text
    assert series(text, "tw_user_followers") == {
        (("username", "alice"), ("verified", "true")): 500.0,
        (("username", "bob"), ("verified", "false")): 300.0,
    }
    assert series(text, "tw_hashtag_tweets") == {(("tag", "python"), ("window", "7d")): 2.0}
    assert value(text, "tw_platform_active_users", window="7d") == 2
    assert value(text, "tw_platform_likes", window="7d") == 10
    assert value(text, "tw_platform_likes_per_tweet", window="7d") == 10
    assert value(text, "tw_up") == 1
    assert value(text, "tw_exporter_build_info", version=__version__) == 1
    assert http_get(proc.url + "/readyz").status == 200

    started = time.monotonic()
    assert proc.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - started < 5
    logs = proc.logs()
    assert "shutting down" in logs
    assert "collecting from" in logs and "***" in logs
    assert PASSWORD not in logs
    assert PASSWORD not in text


def test_version_and_help() -> None:
    out = subprocess.run(exporter_command("--version"), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tw-exporter {__version__}"
    for args in (["--help"], ["run", "--help"], ["check", "--help"], ["demo", "--help"]):
        result = subprocess.run(exporter_command(*args), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage: tw-exporter" in result.stdout
    run_help = subprocess.run(exporter_command("run", "--help"), capture_output=True, text=True)
    for flag in (
        "--dsn",
        "--dsn-file",
        "--listen",
        "--interval",
        "--query-timeout",
        "--top-users",
        "--trending-days",
        "--trending-limit",
        "--stats-days",
        "--max-staleness",
        "--log-level",
        "--log-format",
        "--web-config-file",
    ):
        assert flag in run_help.stdout


def test_python_m_entry_point_matches_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in result.stdout


def test_listen_address_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            exporter_command("run", "--dsn", "postgresql://h/db", "--listen", f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigint_during_a_hung_query_stops_at_once_and_frees_the_backend(
    seeded_db: str, exporter_proc: StartExporter
) -> None:
    await _insert_basic(seeded_db)
    locker = await asyncpg.connect(seeded_db)
    watcher = await asyncpg.connect(seeded_db)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
        # A query timeout far above the bounds below: a shutdown that waited for the hung
        # query, or a backend left to PostgreSQL's lock_timeout, would take 30 s.
        proc = exporter_proc("--dsn", seeded_db, "--interval", "60", "--query-timeout", "30")

        async def exporter_backends(waiting: bool) -> int:
            # Not on `locker`: inside its transaction pg_stat_activity is a frozen snapshot.
            condition = "AND wait_event_type = 'Lock'" if waiting else ""
            return int(
                await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    f"'tw-exporter' AND datname = current_database() {condition}"
                )
            )

        async def hung() -> bool:
            return await exporter_backends(waiting=True) == 1

        await wait_until(hung, timeout=10)
        started = time.monotonic()
        assert proc.stop(signal.SIGINT, timeout=10) == 0
        assert time.monotonic() - started < 3  # shut down without waiting for the query

        async def gone() -> bool:
            return await exporter_backends(waiting=False) == 0

        # The query is cancelled and the pool closed: no backend is left behind, long before
        # lock_timeout (= --query-timeout, 30 s) would end it.
        await wait_until(gone, timeout=5)
    finally:
        await watcher.close()
        await locker.close()
