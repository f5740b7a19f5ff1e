"""The exporter's rewritten queries return what the seed's queries return.

The reference is the seed's SQL, copied verbatim from the asyncpg dashboard the exporter replaces
(``/work/shared/seed/asyncpg-dashboard.txt``). The exporter's queries were reshaped for speed at
10M+ tweets (see ``benchmarks/``), so this file runs both on the same data and compares:

* on hand-made tricky data: ties at the LIMIT boundary, NULL like and follower counts, rows
  exactly at and one microsecond outside the window edge, tweets from the future, two hashtag
  rows with the same text, a NULL tag, a tweet with many tags, tweet ids that are *not* in
  ``created_at`` order, unicode, quotes and emoji;
* on a random dataset from ``exporter.ops.dataset``;
* each without and with the recommended indexes (different plans, same answers);
* the trending query in both of its shapes (``exporter.collectors.schema``), whichever the data
  would pick.

``tests/test_schema_variants.py`` runs the same comparisons on other schemas (UUID ids,
``NOT NULL`` counts, another database collation).

Exactly three differences are intended and documented in the collectors: users with a NULL
follower count are not "top users", ties at the LIMIT boundary are broken by name (the seed
picks an arbitrary one), and a NULL tag is skipped. So each result is compared twice: with the
verbatim seed query, tie-insensitively (same counts, same names above the boundary), and
exactly with the seed query's own un-limited ranking after applying the documented fixes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from exporter.collectors import platform_stats, schema, seed, top_users, trending_hashtags
from exporter.config.settings import query_params
from exporter.ops import dataset
from exporter.ops.schema_file import SQL_DIR

# The seed's SQL, verbatim, lives in exporter.collectors.seed.
SEED_TOP_USERS = seed.TOP_USERS
SEED_TRENDING_HASHTAGS = seed.TRENDING_HASHTAGS
SEED_PLATFORM_STATS = seed.PLATFORM_STATS
SEED_TRENDING_LIMIT = seed.TRENDING_LIMIT
SEED_STATS_DAYS = seed.STATS_DAYS

RECOMMENDED_INDEXES = SQL_DIR / "recommended-indexes.sql"


def _unlimited(sql: str) -> str:
    """The seed query's full ranking: the same text without its final LIMIT."""
    stripped, n = re.subn(r"\s*LIMIT\s+(\$1|\d+)\s*$", "\n", sql.rstrip())
    assert n == 1
    return stripped


# ----------------------------------------------------------------- comparisons


def _tie_insensitive(
    seed: Sequence[tuple[Any, int]], ours: Sequence[tuple[Any, int]], context: str
) -> None:
    """Same counts in the same order, and the same names wherever the count is above the
    boundary (the smallest count returned), where any choice among equals is valid."""
    assert [c for _, c in seed] == [c for _, c in ours], context
    if not seed:
        return
    boundary = seed[-1][1]
    assert Counter(n for n, c in seed if c > boundary) == Counter(
        n for n, c in ours if c > boundary
    ), context


async def _in_snapshot(conn: asyncpg.Connection) -> asyncpg.transaction.Transaction:
    """A repeatable-read transaction: every query below sees the same rows and the same now()."""
    tx = conn.transaction(isolation="repeatable_read", readonly=False)
    await tx.start()
    return tx


async def compare_top_users(conn: asyncpg.Connection, n: int) -> None:
    ours = [
        (r["username"], r["follower_count"], r["verified"])
        for r in await conn.fetch(
            top_users.SQL, *top_users.COLLECTOR.params(query_params(top_users=n))
        )
    ]
    # Exact: the seed's ranking, minus NULL counts, ties by username, then the LIMIT.
    expected = [
        (r["username"], r["follower_count"], r["verified"])
        for r in await conn.fetch(
            f"SELECT * FROM ({_unlimited(SEED_TOP_USERS)}) s"
            " WHERE follower_count IS NOT NULL"
            ' ORDER BY follower_count DESC, username COLLATE "C" LIMIT $1',
            n,
        )
    ]
    assert ours == expected
    assert ours == sorted(ours, key=lambda r: (-r[1], r[0].encode()))  # ties: byte order
    # The verbatim seed puts NULL counts first; what it returns after them must match.
    seed = [
        ((r["username"], r["verified"]), r["follower_count"])
        for r in await conn.fetch(SEED_TOP_USERS, n)
        if r["follower_count"] is not None
    ]
    mine = [((u, v), c) for u, c, v in ours][: len(seed)]
    _tie_insensitive(seed, mine, f"top_users n={n}")


async def compare_trending(
    conn: asyncpg.Connection, days: int, limit: int, shape: schema.Shape = "id-range"
) -> None:
    params = trending_hashtags.COLLECTOR.params(
        query_params(trending_days=days, trending_limit=limit)
    )
    sql = trending_hashtags.COLLECTOR.shapes[shape]
    ours = [(r["tag"], r["tweet_count"]) for r in await conn.fetch(sql, *params)]
    full = [
        (r["tag"], r["tweet_count"])
        for r in await conn.fetch(_unlimited(SEED_TRENDING_HASHTAGS), str(days))
    ]
    expected = [
        (r["tag"], r["tweet_count"])
        for r in await conn.fetch(
            f"SELECT * FROM ({_unlimited(SEED_TRENDING_HASHTAGS)}) s"
            ' WHERE tag IS NOT NULL ORDER BY tweet_count DESC, tag COLLATE "C" LIMIT $2',
            str(days),
            limit,
        )
    ]
    context = f"trending {shape} days={days} limit={limit}"
    assert ours == expected, context
    assert ours == sorted(ours, key=lambda r: (-r[1], r[0].encode())), context  # byte order
    assert all(isinstance(c, int) for _, c in ours)
    assert {tag for tag, _ in ours} <= {tag for tag, _ in full}
    if limit == SEED_TRENDING_LIMIT:
        seed = [
            (r["tag"], r["tweet_count"])
            for r in await conn.fetch(SEED_TRENDING_HASHTAGS, str(days))
            if r["tag"] is not None  # the seed's NULL-tag group, which the exporter skips
        ]
        _tie_insensitive(seed, ours[: len(seed)], context)


async def compare_platform_stats(conn: asyncpg.Connection) -> None:
    params = platform_stats.COLLECTOR.params(query_params(stats_days=SEED_STATS_DAYS))
    ours = await conn.fetchrow(platform_stats.SQL, *params)
    seed = await conn.fetchrow(SEED_PLATFORM_STATS)
    assert ours is not None and seed is not None
    assert ours["total_tweets"] == seed["total_tweets"]
    assert ours["active_users"] == seed["active_users"]
    # The exporter exports "no likes" as 0 where the seed's SUM is NULL (empty window).
    assert ours["total_likes"] == float(seed["total_likes"] or 0)
    if seed["avg_likes"] is None:
        assert ours["avg_likes"] is None
    else:
        assert isinstance(seed["avg_likes"], Decimal)
        assert ours["avg_likes"] == float(seed["avg_likes"])  # bit-for-bit, no tolerance


async def compare_all(
    conn: asyncpg.Connection, shapes: Sequence[schema.Shape] = schema.SHAPES
) -> None:
    for n in (1, 3, 5, 10, 50):
        await compare_top_users(conn, n)
    for shape in shapes:
        for days in (1, 7, 30):
            for limit in (1, 3, 10, 25):
                await compare_trending(conn, days, limit, shape)
    await compare_platform_stats(conn)


async def create_recommended_indexes(conn: asyncpg.Connection) -> None:
    """Every index from exporter/sql/recommended-indexes.sql (CONCURRENTLY cannot run in a
    transaction, and does not need to here)."""
    text = RECOMMENDED_INDEXES.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for statement in body.split(";"):
        if statement.strip():
            await conn.execute(statement.replace("CONCURRENTLY ", ""))
    await conn.execute("ANALYZE")


# ----------------------------------------------------------------- tricky data

TRICKY_TAGS = [
    "python", "café", "🔥", 'say"hi"', "back\\slash", "日本語", "o'reilly", "a b", "Zeta",
    "zeta", "ümlaut", "twin", "twin", "emoji🎉", "tie1", "tie2", "tie3", "tie4", "tie5",
    "tie6", "tie7", "tie8", "tie9", "tie10", "tie11", "tie12", "lonely", "edge_in", "edge_out",
    "future", "many",
]  # fmt: skip


async def load_tricky(
    conn: asyncpg.Connection, *, uuid_ids: bool = False, not_null_counts: bool = False
) -> None:
    """Hand-made rows, inserted in the caller's transaction so now() is the queries' now().

    ``uuid_ids``: tw_users.id, tw_tweets.id and the columns referring to them are UUIDs (each
    integer id below maps to a fixed UUID, in no particular order). ``not_null_counts``:
    follower_count is NOT NULL, so the users with an unknown count get 0 instead.
    """
    tweet_id = "md5($1::bigint::text)::uuid" if uuid_ids else "$1"
    user_id = "md5('u' || $2::bigint::text)::uuid" if uuid_ids else "$2"
    # A platform schema need not have these constraints; the seed's queries then still work.
    await conn.execute("ALTER TABLE tw_hashtags DROP CONSTRAINT tw_hashtags_tag_key")
    await conn.execute("ALTER TABLE tw_hashtags ALTER COLUMN tag DROP NOT NULL")
    users = [
        ("alice", 100, True), ("bob", 100, False), ("carol", 100, False), ("dave", 50, False),
        ("eve", None, False), ("frank", None, True), ('q"uote', 70, False), ("ba\\ck", 70, True),
        ("😎", 70, False), ("zoë", 10, False), ("Émile", 10, False), ("o'brien", 0, False),
    ]  # fmt: skip
    if not_null_counts:
        users = [(name, 0 if count is None else count, v) for name, count, v in users]
    await conn.executemany(
        "INSERT INTO tw_users (username, follower_count, verified) VALUES ($1, $2, $3)", users
    )
    tag_ids = {}
    for i, tag in enumerate(TRICKY_TAGS, start=1):
        await conn.execute("INSERT INTO tw_hashtags (id, tag) VALUES ($1, $2)", i, tag)
        tag_ids.setdefault(tag, []).append(i)
    await conn.execute("INSERT INTO tw_hashtags (id, tag) VALUES (1000, NULL), (1001, NULL)")

    next_id = 1_000_000  # ids deliberately out of created_at order

    async def tweet(
        age: str, tags: Sequence[int], *, likes: int | None = 1, user: int = 1, tid: int = 0
    ) -> None:
        nonlocal next_id
        if not tid:
            next_id -= 7
            tid = next_id
        await conn.execute(
            "INSERT INTO tw_tweets (id, user_id, like_count, created_at)"
            f" VALUES ({tweet_id}, {user_id}, $3, now() - {age})",
            tid,
            user,
            likes,
        )
        for tag in tags:
            await conn.execute(
                f"INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ({tweet_id}, $2)",
                tid,
                tag,
            )

    t = {tag: ids[0] for tag, ids in tag_ids.items()}
    twin_a, twin_b = tag_ids["twin"]
    for i in range(6):
        await tweet("interval '1 hour'", [t["python"], t["🔥"]], likes=i * 3, user=1 + i % 5)
    for i in range(5):
        await tweet("interval '2 days'", [t["café"], t['say"hi"']], likes=None, user=2 + i % 3)
    for _ in range(3):  # "twin" counts 3 + 2 = 5 as one tag, as in the seed's GROUP BY h.tag
        await tweet("interval '3 days'", [twin_a], user=7)
    for _ in range(2):
        await tweet("interval '3 days'", [twin_b], user=8)
    for i in range(12):  # twelve tags tied with 2 tweets each across the LIMIT boundary
        await tweet("interval '4 days'", [t[f"tie{i + 1}"], t["日本語"]], likes=i, user=9)
        await tweet("interval '5 days'", [t[f"tie{i + 1}"]], likes=2**30, user=10)
    for tag in ("back\\slash", "o'reilly", "a b", "Zeta", "zeta", "ümlaut", "emoji🎉"):
        await tweet("interval '6 days'", [t[tag]], user=11)
    await tweet("interval '1 day'", [1000], user=12)  # NULL tags: skipped by the exporter
    await tweet("interval '1 day'", [1000, 1001], user=12)
    await tweet("interval '8 days'", [1001, t["lonely"]], user=12)
    # Exactly at the window edges (included), and one microsecond older (excluded).
    for days in (1, 7, 30):
        await tweet(f"make_interval(days => {days})", [t["edge_in"]], likes=days, user=3)
        await tweet(
            f"(make_interval(days => {days}) + interval '1 microsecond')",
            [t["edge_out"], t["python"]],
            likes=1000,
            user=4,
        )
    await tweet("interval '-1 hour'", [t["future"]], likes=5, user=5)  # clock skew
    await tweet("interval '0'", list(range(1, len(TRICKY_TAGS) + 1)), user=6)  # many tags
    await tweet("interval '12 hours'", [t["many"]], user=6, tid=1)  # lowest id, in window
    await tweet("interval '40 days'", [t["many"], t["python"]], user=6, tid=5_000_000)
    await tweet("interval '2 hours'", [], likes=None, user=1)  # no tags at all


@pytest.mark.parametrize("indexes", [False, True], ids=["plain-schema", "recommended-indexes"])
async def test_tricky_data(seeded_db: str, indexes: bool) -> None:
    conn = await asyncpg.connect(seeded_db)
    try:
        if indexes:
            await create_recommended_indexes(conn)
        tx = await _in_snapshot(conn)
        try:
            await load_tricky(conn)
            await conn.execute("ANALYZE")
            await compare_all(conn)
            if indexes:  # make the planner take the index paths even on a tiny table
                await conn.execute("SET LOCAL enable_seqscan = off")
                await compare_all(conn)
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def test_empty_tables(seeded_db: str) -> None:
    conn = await asyncpg.connect(seeded_db)
    try:
        await compare_all(conn)
        row = await conn.fetchrow(platform_stats.SQL, SEED_STATS_DAYS)
        assert row is not None
        assert (row["total_tweets"], row["active_users"], row["total_likes"]) == (0, 0, 0.0)
        assert row["avg_likes"] is None
    finally:
        await conn.close()


async def test_generated_dataset(seeded_db: str) -> None:
    conn = await asyncpg.connect(seeded_db)
    try:
        await dataset.load_dataset(
            conn, dataset.DatasetSpec(tweets=30_000, users=800, hashtags=60, days=40, seed=7)
        )
        await dataset.add_activity(conn, tweets=200, follows=300, rng_seed=3)
        tx = await _in_snapshot(conn)
        try:
            await compare_all(conn)
        finally:
            await tx.rollback()
        await create_recommended_indexes(conn)
        tx = await _in_snapshot(conn)
        try:
            await compare_all(conn)
            await conn.execute("SET LOCAL enable_seqscan = off")
            await compare_all(conn)
        finally:
            await tx.rollback()
    finally:
        await conn.close()


async def test_oldest_window_tweet_has_the_smallest_id(seeded_db: str) -> None:
    """The id bound comes from the tweet exactly at the window's edge (and an older tweet with
    an even smaller id must stay outside), so an off-by-one in the bound would show."""
    conn = await asyncpg.connect(seeded_db)
    try:
        tx = await _in_snapshot(conn)
        try:
            await conn.execute(
                "INSERT INTO tw_users (id, username, follower_count) VALUES (1, 'u', 1)"
            )
            await conn.execute("INSERT INTO tw_hashtags (id, tag) VALUES (1, 'edge'), (2, 'new')")
            for tid, age in ((10, "interval '7 days'"), (5, "interval '7 days 00:00:00.000001'"),
                             (20, "interval '1 hour'"), (30, "interval '8 days'")):  # fmt: skip
                await conn.execute(
                    "INSERT INTO tw_tweets (id, user_id, created_at)"
                    f" VALUES ($1, 1, now() - {age})",
                    tid,
                )
                await conn.execute(
                    "INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ($1, 1), ($1, 2)",
                    tid,
                )
            ours = await conn.fetch(trending_hashtags.SQL, 7, 10)
            assert [(r["tag"], r["tweet_count"]) for r in ours] == [("edge", 2), ("new", 2)]
            await compare_all(conn)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
