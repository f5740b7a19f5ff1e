"""A database whose user names and tags attack the label-value bound (issue #15).

Used by ``tests/test_label_values.py`` and ``benchmarks/label_values.py`` (scrape size before
and after). Long values repeat a short pattern, as real spam does, so PostgreSQL compresses
them: a btree index entry must fit in about 2.7 kB after compression, and the schema's UNIQUE
constraints and the recommended indexes (``exporter/sql/``) index both ``tag`` and ``username``.
The rows are inserted *after* those indexes exist, which shows that such values can reach the
database.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from benchmarks.common import recommended_statements
from exporter.ops import dataset

BIG_TAG = "spam" * 25_000  # 100,000 bytes, the most used tag
BIG_USER = "whale" * 10_000  # 50,000 bytes, the most followed user
# Two long tags that differ only far after any cut: they must stay two series.
TWIN_A = "twin-" + "x" * 3_000 + "-a"
TWIN_B = "twin-" + "x" * 3_000 + "-b"
EMOJI_TAG = "🔥" * 1_000  # 4 bytes per code point: a byte cut lands inside one
COMBINING_TAG = "e\u0301" * 1_000  # e + COMBINING ACUTE ACCENT: a cut may separate them
ZWJ_USER = "👩\u200d👩\u200d👧" * 300  # zero-width-joined emoji family, 18 bytes each
# A short tag crafted to equal what BIG_TAG is shortened to at the default limit (256 bytes):
# its first 241 bytes, "…" and the first 12 hex digits of its SHA-256.
CRAFTED_TAG = "spam" * 60 + "s…338b4df77133"

# tag -> tweets carrying it inside the 7-day window (all distinct, so the top K is exact)
TAGS: dict[str, int] = {
    BIG_TAG: 40,
    TWIN_A: 30,
    TWIN_B: 20,
    EMOJI_TAG: 15,
    COMBINING_TAG: 12,
    CRAFTED_TAG: 10,
    "": 8,
    "python": 5,
    "grafana": 3,
}
# username -> (followers, verified)
USERS: dict[str, tuple[int, bool]] = {
    BIG_USER: (1_000_000_000, True),
    ZWJ_USER: (500_000_000, False),
    "🔥" * 100: (1_000_000, False),
    "": (1_000, False),
    "alice": (900, True),
    "bob": (50, False),
}
LONG_TAGS = (BIG_TAG, TWIN_A, TWIN_B, EMOJI_TAG, COMBINING_TAG)
LONG_USERS = (BIG_USER, ZWJ_USER, "🔥" * 100)


@dataclass(frozen=True)
class Stored:
    """What the database holds, read back (so it is PostgreSQL's text, byte for byte)."""

    tags: dict[str, int]
    users: dict[str, tuple[int, bool]]


async def create_recommended_indexes(conn: asyncpg.Connection) -> None:
    for _, statement in recommended_statements():
        await conn.execute(statement)


async def load_hostile_labels(dsn: str) -> Stored:
    """Create the schema and the recommended indexes, then insert the hostile rows."""
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
        await create_recommended_indexes(conn)
        author = 0
        for name, (followers, verified) in USERS.items():
            author = await conn.fetchval(
                "INSERT INTO tw_users (username, follower_count, verified) "
                "VALUES ($1, $2, $3) RETURNING id",
                name,
                followers,
                verified,
            )
        tweets = [
            await conn.fetchval(
                "INSERT INTO tw_tweets (user_id, like_count, created_at) "
                "VALUES ($1, 1, now() - interval '1 hour') RETURNING id",
                author,
            )
            for _ in range(max(TAGS.values()))
        ]
        for tag, count in TAGS.items():
            tag_id = await conn.fetchval(
                "INSERT INTO tw_hashtags (tag) VALUES ($1) RETURNING id", tag
            )
            await conn.executemany(
                "INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ($1, $2)",
                [(tweet, tag_id) for tweet in tweets[:count]],
            )
        await conn.execute("ANALYZE")
        users = await conn.fetch("SELECT username, follower_count, verified FROM tw_users")
        tags = await conn.fetch(
            "SELECT h.tag, count(*) AS n FROM tw_hashtags h "
            "JOIN tw_tweet_hashtags th ON th.hashtag_id = h.id GROUP BY h.tag"
        )
    finally:
        await conn.close()
    stored = Stored(
        tags={r["tag"]: r["n"] for r in tags},
        users={r["username"]: (r["follower_count"], r["verified"]) for r in users},
    )
    assert stored == Stored(TAGS, USERS), "the database did not store the values exactly"
    return stored
