"""The synthetic-dataset generator (exporter/ops/dataset.py) against a real PostgreSQL.

Server: the suite's ``pg_server`` fixture (``TW_TEST_DSN``, testcontainers or embedded).
One scratch database per module; every load gets its own schema
(the generator uses unqualified table names, so ``search_path`` picks the schema).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from exporter.ops import dataset
from exporter.ops.dataset import DatasetSpec
from tests.conftest import PgServer
from tests.helpers import execute

TWEETS = 20_000
SPEC = DatasetSpec(tweets=TWEETS, seed=42)


@dataclass(frozen=True)
class Scratch:
    dsn: str  # DSN of the scratch database

    async def connect(self, schema: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn, server_settings={"search_path": schema})

    async def new_schema(self) -> str:
        name = f"s_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f"CREATE SCHEMA {name}")
        finally:
            await conn.close()
        conn = await self.connect(name)
        try:
            await dataset.create_schema(conn)
        finally:
            await conn.close()
        return name

    async def load(self, spec: DatasetSpec) -> str:
        schema = await self.new_schema()
        conn = await self.connect(schema)
        try:
            await dataset.load_dataset(conn, spec)
        finally:
            await conn.close()
        return schema


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


async def _reachable(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="module")
def admin_dsn(pg_server: PgServer) -> str:
    return pg_server.dsn


@pytest.fixture(scope="module")
def scratch(admin_dsn: str) -> Iterator[Scratch]:
    name = f"tw_ds_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield Scratch(_with_database(admin_dsn, name))
    finally:
        asyncio.run(execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def main_schema(scratch: Scratch) -> str:
    """One 20k-tweet dataset shared by the read-only tests."""
    return asyncio.run(scratch.load(SPEC))


@pytest.fixture
async def conn(scratch: Scratch, main_schema: str) -> AsyncIterator[asyncpg.Connection]:
    c = await scratch.connect(main_schema)
    try:
        yield c
    finally:
        await c.close()


# ------------------------------------------------------------------ spec (no database)


def test_spec_defaults() -> None:
    spec = DatasetSpec(tweets=20_000)
    assert (spec.n_users, spec.n_hashtags, spec.days) == (1000, 50, 60)
    assert DatasetSpec(tweets=10).n_users == 1
    assert DatasetSpec(tweets=0).n_users == 1
    assert DatasetSpec(tweets=10_000_000).n_hashtags == 10_000
    assert DatasetSpec(tweets=10**9).n_hashtags == 20_000
    assert DatasetSpec(tweets=100, users=7, hashtags=3).n_users == 7
    assert DatasetSpec(tweets=100, users=7, hashtags=3).n_hashtags == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tweets": -1},
        {"tweets": 1, "users": 0},
        {"tweets": 1, "hashtags": 0},
        {"tweets": 1, "days": 0},
    ],
)
def test_spec_rejects_nonsense(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the messages differ per field
        DatasetSpec(**kwargs)


def test_seed_maps_into_setseed_range() -> None:
    assert DatasetSpec(tweets=1, seed=0.25).setseed_value == 0.25
    values = {DatasetSpec(tweets=1, seed=s).setseed_value for s in (0, 1, 42, 10**12, -5, 3.5)}
    assert len(values) == 6
    assert all(-1.0 <= v <= 1.0 for v in values)
    again = DatasetSpec(tweets=1, seed=42)
    assert again.setseed_value == DatasetSpec(tweets=1, seed=42).setseed_value


# ------------------------------------------------------------------ the loaded dataset


async def test_counts(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval("SELECT count(*) FROM tw_tweets") == TWEETS
    assert await conn.fetchval("SELECT count(*) FROM tw_users") == TWEETS // 20
    assert await conn.fetchval("SELECT count(*) FROM tw_hashtags") == SPEC.n_hashtags
    links = await conn.fetchval("SELECT count(*) FROM tw_tweet_hashtags")
    assert 1.0 * TWEETS < links < 1.35 * TWEETS  # ~1.2 tags per tweet


async def test_tweets_within_days(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT min(created_at) >= now() - interval '60 days' - interval '5 minutes' AS old_ok,"
        "       max(created_at) <= now() AS new_ok,"
        "       count(*) FILTER (WHERE created_at > now() - interval '1 day') AS last_day,"
        "       count(*) FILTER (WHERE created_at < now() - interval '59 days') AS first_day,"
        "       corr(id, extract(epoch FROM created_at)) AS id_time_corr"
        " FROM tw_tweets"
    )
    assert row["old_ok"]
    assert row["new_ok"]
    # Spread over the whole window, slightly skewed towards now (uniform would be 1/60 each).
    assert row["first_day"] > 0
    assert row["last_day"] > row["first_day"]
    assert TWEETS / 60 < row["last_day"] < TWEETS / 15
    assert row["id_time_corr"] > 0.99  # ids are time-ordered


async def test_null_like_count_fraction(conn: asyncpg.Connection) -> None:
    nulls = await conn.fetchval("SELECT count(*) FROM tw_tweets WHERE like_count IS NULL")
    assert 0.012 * TWEETS < nulls < 0.03 * TWEETS


async def test_likes_heavy_tailed(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT min(like_count) AS lo, max(like_count) AS hi,"
        "       percentile_cont(0.5) WITHIN GROUP (ORDER BY like_count) AS median,"
        "       avg(like_count)::float8 AS mean FROM tw_tweets"
    )
    assert row["lo"] == 0
    assert row["hi"] > 100 * max(row["median"], 1)
    assert row["mean"] > row["median"]


async def test_follower_counts(conn: asyncpg.Connection) -> None:
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE follower_count IS NULL) AS nulls,"
        "       count(*) FILTER (WHERE verified) AS verified,"
        "       count(*) AS users, min(follower_count) AS lo FROM tw_users"
    )
    assert 0 < row["nulls"] < 0.02 * row["users"]
    assert 0 < row["verified"] < 0.08 * row["users"]
    assert row["lo"] >= 0
    top_share = await conn.fetchval(
        "SELECT (sum(follower_count) FILTER (WHERE rn <= $1))::float8 / sum(follower_count)"
        " FROM (SELECT follower_count,"
        "              row_number() OVER (ORDER BY follower_count DESC NULLS LAST) AS rn"
        "       FROM tw_users) AS s",
        max(1, SPEC.n_users // 100),
    )
    assert top_share > 0.20


async def test_hashtags_skewed_and_distinct(conn: asyncpg.Connection) -> None:
    counts = [
        r["n"]
        for r in await conn.fetch(
            "SELECT count(*) AS n FROM tw_tweet_hashtags GROUP BY hashtag_id ORDER BY n DESC"
        )
    ]
    median = counts[len(counts) // 2]
    assert counts[0] > 5 * median
    # Rank == id: tag 1 is the most used one.
    assert (
        await conn.fetchval(
            "SELECT hashtag_id FROM tw_tweet_hashtags GROUP BY 1 ORDER BY count(*) DESC LIMIT 1"
        )
        == 1
    )
    per_tweet = dict(
        await conn.fetch(
            "SELECT n, count(*) FROM (SELECT t.id, count(th.hashtag_id) AS n FROM tw_tweets t"
            " LEFT JOIN tw_tweet_hashtags th ON th.tweet_id = t.id GROUP BY t.id) AS s"
            " GROUP BY n"
        )
    )
    assert set(per_tweet) == {0, 1, 2, 3}
    assert 0.25 * TWEETS < per_tweet[0] < 0.35 * TWEETS
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM tw_tweet_hashtags"
            " GROUP BY tweet_id, hashtag_id HAVING count(*) > 1) AS d"
        )
        == 0
    )


async def test_unicode_and_escaping_material(conn: asyncpg.Connection) -> None:
    non_ascii_users = await conn.fetchval(
        "SELECT count(*) FROM tw_users WHERE username ~ '[^\\x01-\\x7e]'"
    )
    assert non_ascii_users > 0
    assert await conn.fetchval("SELECT count(*) FROM tw_users WHERE username LIKE '%\"%'") > 0
    top_users = await conn.fetch(
        "SELECT username FROM tw_users ORDER BY follower_count DESC NULLS LAST LIMIT 20"
    )
    assert any(
        not r["username"].isascii() or '"' in r["username"] or "\\" in r["username"]
        for r in top_users
    )
    top_tags = [
        r["tag"] for r in await conn.fetch("SELECT tag FROM tw_hashtags ORDER BY id LIMIT 10")
    ]
    assert any(not t.isascii() for t in top_tags)
    assert any('"' in t for t in top_tags)
    assert any("\\" in t for t in top_tags)
    assert "🔥" in top_tags


async def test_constraints_rebuilt_and_sequences_advanced(conn: asyncpg.Connection) -> None:
    constraints = {
        (r["conname"], r["convalidated"])
        for r in await conn.fetch(
            "SELECT conname, convalidated FROM pg_constraint"
            " WHERE conrelid = ANY($1::regclass[]) AND contype IN ('p', 'u', 'f')",
            list(dataset.TABLES),
        )
    }
    assert {name for name, _ in constraints} == {
        "tw_users_pkey",
        "tw_users_username_key",
        "tw_tweets_pkey",
        "tw_tweets_user_id_fkey",
        "tw_hashtags_pkey",
        "tw_hashtags_tag_key",
        "tw_tweet_hashtags_pkey",
        "tw_tweet_hashtags_tweet_id_fkey",
        "tw_tweet_hashtags_hashtag_id_fkey",
    }
    assert all(valid for _, valid in constraints)
    # ANALYZEd: the planner knows the sizes.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE oid = ANY($1::regclass[]) AND reltuples > 0",
            list(dataset.TABLES),
        )
        == 4
    )
    # Identity sequences continue after the generated ids (checked in a rolled-back tx).
    tx = conn.transaction()
    await tx.start()
    try:
        new_id = await conn.fetchval("INSERT INTO tw_tweets (user_id) VALUES (1) RETURNING id")
        assert new_id == TWEETS + 1
    finally:
        await tx.rollback()


# ------------------------------------------------------------------ loads of their own


async def _fingerprint(scratch: Scratch, schema: str) -> tuple[str, str, str]:
    c = await scratch.connect(schema)
    try:
        users = await c.fetchval(
            "SELECT md5(string_agg(concat_ws('|', id, username, follower_count, verified,"
            " extract(epoch FROM max_at - created_at)), ',' ORDER BY id))"
            " FROM tw_users, (SELECT max(created_at) AS max_at FROM tw_users) AS m"
        )
        tweets = await c.fetchval(
            "SELECT md5(string_agg(concat_ws('|', id, user_id, content, like_count,"
            " extract(epoch FROM max_at - created_at)), ',' ORDER BY id))"
            " FROM tw_tweets, (SELECT max(created_at) AS max_at FROM tw_tweets) AS m"
        )
        links = await c.fetchval(
            "SELECT md5(string_agg(tweet_id || ':' || hashtag_id, ','"
            " ORDER BY tweet_id, hashtag_id)) FROM tw_tweet_hashtags"
        )
        return str(users), str(tweets), str(links)
    finally:
        await c.close()


async def test_reproducible_with_same_seed(scratch: Scratch) -> None:
    spec = DatasetSpec(tweets=5_000, seed=7)
    a = await _fingerprint(scratch, await scratch.load(spec))
    b = await _fingerprint(scratch, await scratch.load(spec))
    c = await _fingerprint(scratch, await scratch.load(DatasetSpec(tweets=5_000, seed=8)))
    assert a == b
    assert all(x != y for x, y in zip(a, c, strict=True))


async def test_progress_chunks_and_refuses_nonempty(
    scratch: Scratch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dataset, "CHUNK_SIZE", 1_000)
    schema = await scratch.new_schema()
    c = await scratch.connect(schema)
    try:
        # A user-defined index survives the drop/re-create around the bulk load.
        await c.execute("CREATE INDEX my_tweets_created_at ON tw_tweets (created_at)")
        calls: list[tuple[int, int]] = []
        await dataset.load_dataset(
            c, DatasetSpec(tweets=2_500, days=3), lambda d, t: calls.append((d, t))
        )
        assert calls == [(1_000, 2_500), (2_000, 2_500), (2_500, 2_500)]
        assert await c.fetchval("SELECT to_regclass('my_tweets_created_at') IS NOT NULL")
        assert await c.fetchval(
            "SELECT min(created_at) >= now() - interval '3 days 5 minutes' FROM tw_tweets"
        )
        with pytest.raises(ValueError, match="empty"):
            await dataset.load_dataset(c, DatasetSpec(tweets=10))
        with pytest.raises(ValueError, match="transaction"):
            async with c.transaction():
                await dataset.load_dataset(c, DatasetSpec(tweets=10), vacuum=True)
        await dataset.reset_schema(c)
        assert await c.fetchval("SELECT to_regclass('tw_tweets')") is None
        await dataset.create_schema(c)
        await dataset.load_dataset(c, DatasetSpec(tweets=0), vacuum=True)
        assert await c.fetchval("SELECT count(*) FROM tw_users") == 1
        assert await c.fetchval("SELECT count(*) FROM tw_tweets") == 0
    finally:
        await c.close()


async def test_add_activity(scratch: Scratch) -> None:
    schema = await scratch.load(DatasetSpec(tweets=4_000, seed=3))
    c = await scratch.connect(schema)
    try:
        stats = (
            "SELECT (SELECT count(*) FROM tw_tweets) AS tweets,"
            " (SELECT sum(follower_count) FROM tw_users) AS followers,"
            " (SELECT sum(like_count) FROM tw_tweets) AS likes,"
            " (SELECT count(*) FROM tw_users WHERE follower_count IS NULL) AS null_followers,"
            " (SELECT count(*) FROM tw_tweet_hashtags) AS links"
        )
        before = await c.fetchrow(stats)
        await dataset.add_activity(c, tweets=50, follows=200, rng_seed=1)
        after = await c.fetchrow(stats)
        assert after["tweets"] == before["tweets"] + 50
        assert before["followers"] < after["followers"] <= before["followers"] + 200
        assert after["likes"] > before["likes"]
        assert after["null_followers"] == before["null_followers"]
        assert after["links"] > before["links"]
        row = await c.fetchrow(
            "SELECT count(*) AS n, min(created_at) >= now() - interval '1 minute' AS recent"
            " FROM tw_tweets WHERE id > 4000"
        )
        assert row["n"] == 50
        assert row["recent"]
        assert (
            await c.fetchval(
                "SELECT max(n) FROM (SELECT count(*) AS n FROM tw_tweet_hashtags"
                " WHERE tweet_id > 4000 GROUP BY tweet_id) AS s"
            )
            <= 3
        )
        # Repeated calls keep working (no conflicts) and can go without tweets.
        await dataset.add_activity(c)
        await dataset.add_activity(c, tweets=0, follows=10)
        assert await c.fetchval("SELECT count(*) FROM tw_tweets") == before["tweets"] + 100
    finally:
        await c.close()


async def test_add_activity_on_empty_tables(scratch: Scratch) -> None:
    schema = await scratch.new_schema()
    c = await scratch.connect(schema)
    try:
        await dataset.add_activity(c)
        assert await c.fetchval("SELECT count(*) FROM tw_tweets") == 0
    finally:
        await c.close()
