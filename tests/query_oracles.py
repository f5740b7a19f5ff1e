"""The seed's queries as oracles: each comparison runs the seed's SQL (verbatim, from
``exporter.collectors.seed``) and the exporter's on the same data in one snapshot and asserts
the same answer, up to the three documented differences (``tests/test_query_equivalence.py``
explains them). Shared by the equivalence tests and the schema-variant tests."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import asyncpg

from exporter.collectors import platform_stats, schema, seed, top_users, trending_hashtags
from exporter.config.settings import query_params
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


async def in_snapshot(conn: asyncpg.Connection) -> asyncpg.transaction.Transaction:
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
