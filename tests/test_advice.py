"""``exporter.ops.advice``: plan inspection names exactly the recommended indexes that are
missing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from exporter.config.settings import query_params
from exporter.ops import advice, dataset
from exporter.ops.advice import RECOMMENDED, ExistingIndex, RecommendedIndex, advise, satisfies
from exporter.ops.check import check
from exporter.ops.embedded import EmbeddedPostgres
from exporter.ops.schema_file import SQL_DIR
from tests.conftest import MakeDb, copy_cluster, private_directory

SQL_FILE = SQL_DIR / "recommended-indexes.sql"
MIN_ROWS = 1_000  # the test dataset is small; production uses advice.DEFAULT_MIN_ROWS


def by_query(items: list[advice.QueryAdvice]) -> dict[str, advice.QueryAdvice]:
    return {item.query: item for item in items}


def names(item: advice.QueryAdvice) -> set[str]:
    return {index.name for index in item.missing}


async def create(conn: asyncpg.Connection, index: RecommendedIndex) -> None:
    await conn.execute(index.statement)  # CONCURRENTLY works: asyncpg autocommits


@pytest.fixture
async def small_db(seeded_db: str) -> str:
    conn = await asyncpg.connect(seeded_db)
    try:
        await dataset.load_dataset(
            conn, dataset.DatasetSpec(tweets=6_000, users=2_000, hashtags=50, days=30, seed=1)
        )
    finally:
        await conn.close()
    return seeded_db


async def test_missing_indexes_are_named_then_nothing_is_missing(small_db: str) -> None:
    conn = await asyncpg.connect(small_db)
    try:
        before = by_query(await advise(conn, query_params(), min_rows=MIN_ROWS))
        assert names(before["platform_stats"]) == {"tw_tweets_created_at_cover_idx"}
        assert names(before["trending_hashtags"]) == {
            "tw_tweets_created_at_cover_idx",
            "tw_tweets_id_created_at_idx",
        }  # the link table's primary key already is (tweet_id, hashtag_id)
        assert names(before["top_users"]) == {"tw_users_followers_rank_idx"}
        # A few thousand rows: the planner scans tw_tweets and tw_users sequentially.
        assert {s.table for s in before["platform_stats"].seq_scans} == {"tw_tweets"}
        assert {s.table for s in before["top_users"].seq_scans} == {"tw_users"}
        for item in before.values():  # never both "used" and "create it" for one index
            for index in item.missing:
                assert f"{index.name} used" not in item.format(), item.format()
                assert f"{index.name} missing" in item.format(), item.format()
        text = before["platform_stats"].format()
        assert "Seq Scan on tw_tweets" in text
        assert (
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS tw_tweets_created_at_cover_idx "
            "ON tw_tweets (created_at) INCLUDE (id, user_id, like_count);" in text
        )
        assert not before["platform_stats"].ok

        for index in RECOMMENDED[:3]:
            await create(conn, index)
        await conn.execute("ANALYZE")
        # Make the planner prefer the indexes on these small tables, as it does on big ones.
        await conn.execute("SET enable_seqscan = off")
        after = await advise(conn, query_params(), min_rows=MIN_ROWS, analyze=True)
        for item in after:
            assert item.missing == (), item.format()
            assert item.seq_scans == (), item.format()
            assert item.ok
            assert item.execution_ms is not None
            assert item.format().startswith(f"advice {item.query}: ok (")
            for index in item.indexes:
                assert index.state == "used" or index.used_as, item.format()
                assert index.format() in item.format()
    finally:
        await conn.close()


async def test_indexes_count_by_definition_not_by_name(small_db: str) -> None:
    conn = await asyncpg.connect(small_db)
    try:
        # Same definition, other name and key direction flipped as a whole (backward scan).
        await conn.execute(
            "CREATE INDEX my_top ON tw_users (follower_count ASC NULLS LAST, username DESC)"
        )
        # Wider than recommended: still serves (extra key column, more included columns).
        await conn.execute(
            "CREATE INDEX my_window ON tw_tweets (created_at, user_id) INCLUDE (id, like_count)"
        )
        # A partial index with another predicate is "like" the recommended one, so it is not
        # listed as missing: whether the plan can use it is judged from the plan (unused).
        await conn.execute(
            "CREATE INDEX my_ids ON tw_tweets (id) INCLUDE (created_at) WHERE like_count > 0"
        )
        items = by_query(await advise(conn, query_params(), min_rows=MIN_ROWS))
        assert names(items["top_users"]) == set()
        assert names(items["platform_stats"]) == set()
        assert names(items["trending_hashtags"]) == set()

        # Without the link table's primary key, the (tweet_id, hashtag_id) index is advised.
        await conn.execute("ALTER TABLE tw_tweet_hashtags DROP CONSTRAINT tw_tweet_hashtags_pkey")
        items = by_query(await advise(conn, query_params(), min_rows=MIN_ROWS))
        assert "tw_tweet_hashtags_tweet_id_hashtag_id_idx" in names(items["trending_hashtags"])
        assert "ON tw_tweet_hashtags (tweet_id, hashtag_id);" in items["trending_hashtags"].format()

        # Small tables get no advice at all at the production threshold.
        items = by_query(await advise(conn, query_params()))
        assert all(not item.missing and not item.seq_scans for item in items.values())
    finally:
        await conn.close()


def test_matching_rules() -> None:
    wanted = next(r for r in RECOMMENDED if r.name == "tw_users_followers_rank_idx")

    def existing(keys: tuple[tuple[str, bool, bool], ...], predicate: str | None = None,
                 valid: bool = True, method: str = "btree") -> ExistingIndex:  # fmt: skip
        return ExistingIndex("x", "tw_users", method, valid, keys, (), predicate)

    good = (("follower_count", True, True), ("username", False, False))
    assert satisfies(existing(good), wanted)
    # The earlier recommendation was partial: PostgreSQL 17+ cannot use it on a NOT NULL column.
    assert not satisfies(existing(good, "(follower_count IS NOT NULL)"), wanted)
    collated = ExistingIndex("x", "tw_users", "btree", True, good, (), None, (None, "C"))
    assert satisfies(collated, wanted)
    # ORDER BY username COLLATE "C" cannot come off an index in the database's collation.
    default = ExistingIndex("x", "tw_users", "btree", True, good, (), None, (None, "default"))
    assert not satisfies(default, wanted)
    assert any('collation "default"' in d for d in advice.differences(default, wanted))
    assert not satisfies(existing(good, valid=False), wanted)  # failed CONCURRENTLY build
    assert not satisfies(existing(good, method="hash"), wanted)
    assert not satisfies(existing(good, "(follower_count > 0)"), wanted)
    mixed = (("follower_count", True, True), ("username", True, True))
    assert not satisfies(existing(mixed), wanted)  # (DESC, DESC) cannot give (DESC, ASC)
    assert not satisfies(existing((("username", False, False),)), wanted)


def test_sql_file_lists_exactly_the_recommended_statements() -> None:
    text = SQL_FILE.read_text()
    statements = {
        " ".join(s.split()) + ";"
        for s in re.findall(
            r"(CREATE INDEX CONCURRENTLY IF NOT EXISTS .*?);",
            "\n".join(line.lstrip("- ") for line in text.splitlines()),
            re.S,
        )
    }
    assert statements == {index.statement for index in RECOMMENDED}


# ------------------------------------------------------------------ what check says, index by index


@pytest.fixture(params=["suite", "embedded"])
async def both_majors(
    request: pytest.FixtureRequest, make_db: MakeDb, pgdata_template: Path
) -> AsyncIterator[str]:
    """A fresh database on the suite's server (the PostgreSQL 15 service in CI's first pass)
    and one on the embedded wheel's server (PostgreSQL 18): plans and catalogs differ between
    majors, and ``check`` must read both right."""
    if request.param == "suite":
        yield await make_db()
        return
    with private_directory() as directory:
        server = EmbeddedPostgres(copy_cluster(pgdata_template, directory / "pgdata"))
        try:
            yield server.dsn
        finally:
            server.cleanup()


async def check_advice(dsn: str) -> dict[str, str]:
    """``tw-exporter check``'s advice lines, by query, as the command prints them."""
    lines: list[str] = []
    assert await check(query_params(dsn=dsn), lines.append) == 0, "\n".join(lines)
    return {
        line.split(":")[0].removeprefix("advice "): line
        for line in lines
        if line.startswith("advice ")
    }


async def test_check_says_index_by_index_what_the_plan_uses(both_majors: str) -> None:
    """The tables are small (below ``DEFAULT_MIN_ROWS``), so every query is ``ok``; the line
    must still say, per recommended index, whether it is missing, present but unused, or used
    (it used to say "the plan uses the recommended indexes" over a seq scan and a sort)."""
    dsn = both_majors
    conn = await asyncpg.connect(dsn)
    try:
        major = await conn.fetchval("SHOW server_version_num")
        await dataset.create_schema(conn)
        await dataset.load_dataset(
            conn, dataset.DatasetSpec(tweets=6_000, users=2_000, hashtags=50, days=30, seed=1)
        )
        database = await conn.fetchval("SELECT current_database()")
        small = "(fine while tw_users has ~2,000 rows, below 100,000)"

        # Missing: no index like the recommended one; the plan scans and sorts tw_users.
        advice_lines = await check_advice(dsn)
        top = advice_lines["top_users"]
        assert top.startswith("advice top_users: ok ("), (major, top)
        assert f"tw_users_followers_rank_idx missing {small}" in top, (major, top)
        assert "tw_tweets_created_at_cover_idx missing" in advice_lines["platform_stats"]
        assert "uses the recommended indexes" not in "\n".join(advice_lines.values())

        rank, cover = (next(r for r in RECOMMENDED if r.name == n) for n in (
            "tw_users_followers_rank_idx", "tw_tweets_created_at_cover_idx"))  # fmt: skip
        await create(conn, rank)
        await create(conn, cover)
        await conn.execute("ANALYZE")

        # Present but unused: the planner may not scan any index.
        await conn.execute(
            f'ALTER DATABASE "{database}" SET enable_indexscan = off; '
            f'ALTER DATABASE "{database}" SET enable_indexonlyscan = off; '
            f'ALTER DATABASE "{database}" SET enable_bitmapscan = off'
        )
        top = (await check_advice(dsn))["top_users"]
        assert (
            "tw_users_followers_rank_idx present (tw_users_followers_rank_idx) but not used by "
            f"the plan {small}" in top
        ), (major, top)

        # Used: sequential scans priced out, the plan reads the indexes.
        await conn.execute(f'ALTER DATABASE "{database}" RESET ALL')
        await conn.execute(f'ALTER DATABASE "{database}" SET enable_seqscan = off')
        advice_lines = await check_advice(dsn)
        assert "tw_users_followers_rank_idx used" in advice_lines["top_users"], (major, top)
        assert "tw_users_followers_rank_idx missing" not in advice_lines["top_users"]
        assert "tw_tweets_created_at_cover_idx used" in advice_lines["platform_stats"], major
    finally:
        await conn.close()
