"""``tw-exporter check --queries-file``: effective settings and their sources, custom queries
prepared (never run) against the real database, plan advice for custom queries."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncpg

from exporter.collect.custom import collectors_for
from exporter.config.queries_file import parse
from exporter.config.settings import query_params
from exporter.ops import dataset
from exporter.ops.advice import advise
from tests.conftest import exporter_command

REPO = Path(__file__).resolve().parent.parent


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command("check", *args), capture_output=True, text=True, timeout=60
    )


def test_check_prints_every_querys_settings_and_prepares_the_custom_ones(seeded_db: str) -> None:
    path = REPO / "examples" / "queries" / "activity.yml"
    result = check("--dsn", seeded_db, "--queries-file", str(path), "--interval", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"queries file: ok ({path}: 3 built-in, 4 custom)" in out
    assert "schedule top_users: interval 20s (--interval), timeout 10s (default" in out
    assert f"schedule daily_active_users: interval 300s ({path}), timeout 30s ({path})" in out
    assert "max staleness 900s (default (3 x interval))" in out
    assert "prepare tweets_last_hour: ok (columns: verified bool, tweets int8)" in out
    assert "prepare most_liked_tweet: ok" in out
    assert "advice daily_active_users: ok (plan cost" in out
    assert "no large sequential scan)" in out  # custom: no recommended indexes to name
    assert "query top_users: ok" in out
    assert "check: ok" in out


def test_check_names_columns_the_database_does_not_return(seeded_db: str, tmp_path: Path) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(
        "queries:\n"
        "  names: {sql: 'SELECT username, id FROM tw_users',\n"
        "          metrics: {tw_names: {help: h, value: username, labels: [nick]}}}\n"
        "  missing: {sql: 'SELECT count(*) AS n FROM tw_no_such_table',\n"
        "            metrics: {tw_missing: {help: h, value: n}}}\n"
        "  typed: {sql: 'SELECT $1::int AS tw_typed', params: [text],\n"
        "          metrics: {tw_typed: {help: h}}}\n"
        "  fine: {sql: 'SELECT count(*) AS tw_fine FROM tw_users', metrics: {tw_fine: {help: h}}}\n"
    )
    result = check("--dsn", seeded_db, "--queries-file", str(path))
    assert result.returncode == 1
    out = result.stdout
    assert (
        "prepare names: FAILED: tw_names: value column 'username' has type text, expected a number"
        in out
    )
    assert "prepare names: FAILED: tw_names: label column 'nick' is not in the result" in out
    assert 'prepare missing: FAILED: relation "tw_no_such_table" does not exist' in out
    assert "prepare typed: FAILED: invalid input for query argument $1" in out
    assert "prepare fine: ok (columns: tw_fine int8)" in out
    assert "check: FAILED (4 problem(s))" in out


def test_check_rejects_an_invalid_file_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "queries.yml"
    path.write_text("queries: {q: {sql: 'SELECT 1', metrics: {m: {help: h, labels: [job]}}}}")
    result = check("--dsn", "postgresql://h/db", "--queries-file", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"tw-exporter: error: {path}: query q, field metrics.m")


async def test_advice_names_sequential_scans_of_a_custom_querys_tables(seeded_db: str) -> None:
    conn = await asyncpg.connect(seeded_db)
    try:
        await dataset.load_dataset(
            conn, dataset.DatasetSpec(tweets=3_000, users=500, hashtags=20, days=30, seed=2)
        )
        await conn.execute("ANALYZE")
        config = parse(
            "queries: {liked: {sql: 'SELECT count(*) AS tw_liked FROM tw_tweets "
            "WHERE like_count > $1', params: [10], metrics: {tw_liked: {help: h}}}}",
            query_params(),
        )
        custom = [c for c in collectors_for(config) if c.name == "liked"]
        [item] = await advise(conn, query_params(), min_rows=1_000, collectors=custom)
    finally:
        await conn.close()
    assert item.query == "liked"
    assert [scan.table for scan in item.seq_scans] == ["tw_tweets"]
    assert item.estimated_cost is not None and item.estimated_cost > 0
    assert "Seq Scan on tw_tweets (~3,000 rows)" in item.format()
