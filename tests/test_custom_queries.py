"""Custom queries on a real PostgreSQL, through the built-ins' own machinery: the documented
examples on the shipped schema, bad data (NULL, non-numeric, duplicates, max_series) counted as
``data`` with the valid rows served, per-query timeouts, the pool's bound, per-query schedules,
staleness, and the per-query rendered parts."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path

import pytest

from exporter.collect.scheduler import start_scheduler
from exporter.config.queries_file import QueriesConfig, load, parse
from exporter.config.settings import query_params
from exporter.db.database import MAX_POOL_SIZE
from tests.conftest import StartExporter, wait_until, wait_until_sync
from tests.helpers import execute, http_get, samples, series, value
from tests.rig import Rig
from tests.rig import make_rig as rig_for

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "queries"
SETTINGS = query_params()


async def make_rig(dsn: str, config: QueriesConfig, rigs: list[Rig]) -> Rig:
    rig = await rig_for(dsn, config=config, query_timeout=5.0, max_staleness=SETTINGS.max_staleness)
    rigs.append(rig)
    return rig


def custom(text: str) -> QueriesConfig:
    """Only the custom queries of ``text`` (built-ins off), validated like at start."""
    off = "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
    off += "platform_stats: {enabled: false}}\n"
    return parse(off + text, SETTINGS)


DATA = """
INSERT INTO tw_users (id, username, follower_count, verified, created_at) VALUES
  (1, 'ann', 7, true, now() - interval '10 minutes'),
  (2, 'ben', 3, false, now() - interval '2 hours'),
  (3, 'cy', NULL, false, now() - interval '30 minutes');
INSERT INTO tw_tweets (id, user_id, like_count, created_at) VALUES
  (1, 1, 5, now() - interval '5 minutes'),
  (2, 1, 9, now() - interval '20 minutes'),
  (3, 2, 1, now() - interval '50 minutes'),
  (4, 2, NULL, now() - interval '3 hours'),
  (5, 3, 2, now() - interval '2 days');
"""


async def test_documented_examples_run_on_the_shipped_schema(
    seeded_db: str, rigs: list[Rig]
) -> None:
    await execute(seeded_db, DATA)
    signups = await make_rig(seeded_db, load(EXAMPLES / "signups.yml", SETTINGS), rigs)
    assert await signups.run_all() is True
    assert value(signups.text, "tw_signups_last_hour") == 2  # ann and cy
    assert value(signups.text, "tw_user_followers", username="ann", verified="true") == 7

    activity = await make_rig(seeded_db, custom((EXAMPLES / "activity.yml").read_text()), rigs)
    assert await activity.run_all() is True
    text = activity.text
    for query in activity.collector.collectors:
        for reason in ("timeout", "connection", "sql", "data"):
            assert activity.errors(query.name, reason) == 0, (query.name, reason)
    assert series(text, "tw_tweets_last_hour") == {
        (("verified", "false"), ("window", "1h")): 1.0,
        (("verified", "true"), ("window", "1h")): 2.0,
    }
    assert value(text, "tw_daily_active_users") == 2
    assert value(text, "tw_tweets_created_total") == 5
    assert series(text, "tw_user_max_likes") == {
        (("username", "ann"),): 9.0,
        (("username", "cy"),): 2.0,
        (("username", "ben"),): 1.0,
    }
    assert value(text, "tw_user_liked_tweets", username="ben") == 1
    assert value(text, "tw_exporter_query_interval_seconds", query="daily_active_users") == 300

    builtins = await make_rig(seeded_db, load(EXAMPLES / "builtins.yml", SETTINGS), rigs)
    assert [c.name for c in builtins.collector.collectors] == ["top_users", "trending_hashtags"]
    assert await builtins.run_all() is True
    assert not series(builtins.text, "tw_platform_tweets")
    assert value(builtins.text, "tw_exporter_query_interval_seconds", query="top_users") == 15


BAD_DATA = """
queries:
  mixed:
    max_series: 3
    sql: |
      SELECT * FROM (VALUES
        ('a', 1::numeric, 'x'), ('b', NULL, 'x'), (NULL, 3, 'x'), ('a', 4, 'x'),
        ('c', 5, 'x'), ('d', 6, 'x')
      ) AS t(k, v, s)
    metrics:
      tw_mixed:
        help: Mixed rows.
        value: v
        labels: [k]
      tw_text_value:
        help: A value column holding text.
        value: s
        labels: [k]
  clean:
    sql: SELECT 42 AS tw_clean
    metrics:
      tw_clean: {help: A clean query beside a bad one.}
"""


async def test_bad_rows_count_as_data_errors_and_the_valid_rows_are_served(
    seeded_db: str, rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(seeded_db, custom(BAD_DATA), rigs)
    assert await rig.run_all() is True
    text = rig.text
    samples(text)  # parses: no duplicate sample, whatever the rows were
    # Rows beyond max_series (3) are not read; of the first three, NULL value and NULL label
    # are skipped and the remaining one is served.
    assert series(text, "tw_mixed") == {(("k", "a"),): 1.0}
    assert not series(text, "tw_text_value")
    assert rig.errors("mixed", "data") == 1  # once per run, however many rows
    assert value(text, "tw_clean") == 42
    assert rig.errors("clean", "data") == 0
    problems = [r.getMessage() for r in caplog.records if "cannot serve" in r.getMessage()]
    assert len(problems) == 1
    assert "more than max_series (3) rows" in problems[0]
    assert "tw_text_value: 2 row(s) whose column s is not a number" in problems[0]
    assert await rig.run_all() is True
    assert rig.errors("mixed", "data") == 2


async def test_duplicate_label_sets_keep_the_first_row(seeded_db: str, rigs: list[Rig]) -> None:
    rig = await make_rig(
        seeded_db,
        custom(
            "queries: {dup: {sql: \"SELECT * FROM (VALUES ('a', 1), ('a', 2), ('b', 3)) "
            't(k, tw_dup)", metrics: {tw_dup: {help: h, labels: [k]}}}}'
        ),
        rigs,
    )
    await rig.run_all()
    assert series(rig.text, "tw_dup") == {(("k", "a"),): 1.0, (("k", "b"),): 3.0}
    assert rig.errors("dup", "data") == 1


async def test_each_query_has_its_own_timeout(seeded_db: str, rigs: list[Rig]) -> None:
    rig = await make_rig(
        seeded_db,
        custom(
            "queries:\n"
            "  slow: {sql: 'SELECT 1 AS tw_slow FROM pg_sleep(1)', timeout: 0.2, interval: 1,\n"
            "         metrics: {tw_slow: {help: h}}}\n"
            "  patient: {sql: 'SELECT 1 AS tw_patient FROM pg_sleep(0.3)', timeout: 20,\n"
            "            interval: 30, metrics: {tw_patient: {help: h}}}\n"
        ),
        rigs,
    )
    started = time.monotonic()
    await rig.run_all()
    assert time.monotonic() - started < 5  # the pool's 5 s did not apply to "slow"
    assert rig.errors("slow", "timeout") == 1
    assert value(rig.text, "tw_patient") == 1  # 0.3 s is within its own 20 s
    assert rig.errors("patient", "timeout") == 0


async def test_forty_queries_share_a_bounded_pool_without_connection_errors(
    seeded_db: str, rigs: list[Rig]
) -> None:
    body = "".join(
        f'  q{i}: {{sql: "SELECT count(*) AS tw_q{i} FROM pg_stat_activity, pg_sleep(0.05) '
        f"WHERE application_name = 'tw-exporter' AND datname = current_database()\", "
        f"metrics: {{tw_q{i}: {{help: h}}}}}}\n"
        for i in range(40)
    )
    rig = await make_rig(seeded_db, custom("queries:\n" + body), rigs)
    assert await rig.run_all() is True
    seen = [value(rig.text, f"tw_q{i}") for i in range(40)]
    assert all(v is not None for v in seen)
    assert max(v for v in seen if v is not None) <= MAX_POOL_SIZE
    for i in range(40):
        assert rig.errors(f"q{i}", "connection") == 0


async def test_a_slow_query_does_not_hold_up_a_fast_one(seeded_db: str, rigs: list[Rig]) -> None:
    rig = await make_rig(
        seeded_db,
        custom(
            "queries:\n"
            "  fast: {sql: 'SELECT 1 AS tw_fast', interval: 0.2, metrics: {tw_fast: {help: h}}}\n"
            "  slow: {sql: 'SELECT 1 AS tw_slow FROM pg_sleep(4)', interval: 10, timeout: 8,\n"
            "         metrics: {tw_slow: {help: h}}}\n"
        ),
        rigs,
    )
    scheduler = start_scheduler(rig.collector)
    try:

        async def fast_ran_five_times() -> bool:
            return rig.collector.runs_completed.get("fast", 0) >= 5

        await wait_until(fast_ran_five_times, timeout=10)
        # Five fast runs (about a second) fit inside the slow query's first run (4 s).
        assert rig.collector.runs_completed.get("slow", 0) == 0
        assert rig.errors("fast", "connection") == 0
        assert rig.errors("fast", "timeout") == 0
    finally:
        scheduler.shutdown(wait=False)
        await rig.collector.cancel_running(1.0)


async def test_series_expire_after_their_own_max_staleness(seeded_db: str, rigs: list[Rig]) -> None:
    rig = await make_rig(
        seeded_db,
        custom(
            "queries:\n"
            "  short: {sql: 'SELECT 1 AS tw_short FROM tw_users LIMIT 1', interval: 1,\n"
            "          max_staleness: 2, metrics: {tw_short: {help: h}}}\n"
            "  long: {sql: 'SELECT 1 AS tw_long FROM tw_users LIMIT 1', interval: 1,\n"
            "         max_staleness: 100, metrics: {tw_long: {help: h}}}\n"
        ),
        rigs,
    )
    await execute(seeded_db, DATA)
    now = [1000.0]
    rig.store._clock = lambda: now[0]
    await rig.run_all()
    assert value(rig.text, "tw_short") == 1 and value(rig.text, "tw_long") == 1
    await execute(seeded_db, "ALTER TABLE tw_users RENAME TO tw_users_gone")
    now[0] += 3
    await rig.run_all()
    assert value(rig.text, "tw_short") is None  # past its 2 s
    assert value(rig.text, "tw_long") == 1  # within its 100 s
    assert rig.store.stale_queries() == ["short"]


async def test_a_run_re_renders_only_its_own_part_and_gzip_members_join(
    seeded_db: str, rigs: list[Rig]
) -> None:
    rig = await make_rig(
        seeded_db,
        custom(
            "queries:\n"
            "  a: {sql: 'SELECT 1 AS tw_a', metrics: {tw_a: {help: h}}}\n"
            "  b: {sql: 'SELECT 2 AS tw_b', metrics: {tw_b: {help: h}}}\n"
        ),
        rigs,
    )
    await rig.run_all()
    part_a = rig.store.queries["a"].part
    assert part_a is not None
    await rig.collector.run_query("b")
    assert rig.store.queries["a"].part is part_a  # not re-rendered
    current = rig.store.current
    assert gzip.decompress(current.text.gzipped) == current.text.body
    assert gzip.decompress(current.openmetrics.gzipped) == current.openmetrics.body
    om = current.openmetrics.body.decode()
    assert om.count("# EOF") == 1 and om.endswith("# EOF\n")
    assert "tw_a 1.0" in om and "tw_b 2.0" in om


def test_the_exporter_serves_custom_queries_on_their_schedules(
    seeded_db: str, exporter_proc: StartExporter, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(
        "builtins: {trending_hashtags: {interval: 5m}}\n"
        "queries:\n"
        "  users: {sql: 'SELECT count(*) AS tw_users_total_rows FROM tw_users', interval: 0.5,\n"
        "          metrics: {tw_users_total_rows: {help: Rows in tw_users.}}}\n"
    )
    asyncio.run(execute(seeded_db, DATA))
    proc = exporter_proc("--dsn", seeded_db, "--queries-file", str(path), "--interval", "10")

    def served() -> bool:
        text = http_get(proc.url + "/metrics").text
        return value(text, "tw_users_total_rows") == 3 and bool(series(text, "tw_user_followers"))

    wait_until_sync(served)
    text = http_get(proc.url + "/metrics").text
    assert value(text, "tw_exporter_query_interval_seconds", query="users") == 0.5
    assert value(text, "tw_exporter_query_interval_seconds", query="trending_hashtags") == 300
    assert value(text, "tw_exporter_query_interval_seconds", query="top_users") == 10
    assert value(text, "tw_user_followers", username="ann", verified="true") == 7
    gz = http_get(proc.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert gz.headers.get("Content-Encoding") == "gzip"
    assert value(gzip.decompress(gz.body).decode(), "tw_users_total_rows") == 3
    asyncio.run(execute(seeded_db, "INSERT INTO tw_users (id, username) VALUES (4, 'dee')"))
    wait_until_sync(lambda: value(http_get(proc.url + "/metrics").text, "tw_users_total_rows") == 4)
    assert proc.stop() == 0
