"""Each query's numbers against values computed independently, in Python, from the rows the
test inserted: unicode, quotes, backslashes and emoji in names, NULL counts, ties at the LIMIT
boundary and rows outside the window."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from exporter.config.settings import Settings, query_params
from exporter.pipeline import build_pipeline
from tests.helpers import series, value

NAMES = [
    "alice",
    "Bob",
    "o'brien",
    'say "hi"',
    "back\\slash",
    "emoji🚀",
    "zoë",
    "日本語",
    "tab\tname",
    "new\nline",
    'a"}b',
    "x=1,y=2",
    "ümlaut",
    "Zed",
    "zed",
    "émile",
]
TAGS = [
    "python",
    "Python",
    "c++",
    "naïve",
    "🔥fire",
    "quote'tag",
    'dq"tag',
    "slash\\tag",
    "spaces in tag",
    "#hash",
    "tie_a",
    "tie_b",
    "tie_c",
    "old_only",
]


@dataclass
class Tweet:
    id: int
    user_id: int
    likes: int | None
    age: timedelta
    tags: list[int]


def build_rows(rng: random.Random) -> tuple[list[tuple[int, str, int | None, bool]], list[Tweet]]:
    users: list[tuple[int, str, int | None, bool]] = []
    for i, name in enumerate(NAMES, start=1):
        followers: int | None = rng.choice([None, 5, 5, 5, 10, 100, 2**40, 0, 5])
        users.append((i, name, followers, rng.random() < 0.3))
    tweets: list[Tweet] = []
    for tweet_id in range(1, 400):
        age = timedelta(hours=rng.choice([1, 30, 100, 160, 167, 169, 200, 24 * 20, 24 * 40]))
        tags = rng.sample(range(1, len(TAGS)), k=rng.randint(0, 3))
        tweets.append(
            Tweet(
                tweet_id,
                rng.randint(1, len(NAMES)),
                rng.choice([None, 0, 1, 7, 1000, 3]),
                age,
                tags,
            )
        )
    # "old_only" is used only outside every window.
    tweets.append(Tweet(1000, 1, 5, timedelta(days=50), [len(TAGS)]))
    return users, tweets


async def insert(
    dsn: str, users: list[tuple[int, str, int | None, bool]], tweets: list[Tweet]
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO tw_users (id, username, follower_count, verified) VALUES ($1,$2,$3,$4)",
            users,
        )
        await conn.executemany(
            "INSERT INTO tw_hashtags (id, tag) VALUES ($1, $2)",
            list(enumerate(TAGS, start=1)),
        )
        await conn.executemany(
            "INSERT INTO tw_tweets (id, user_id, like_count, created_at) "
            "VALUES ($1, $2, $3, now() - $4::interval)",
            [(t.id, t.user_id, t.likes, t.age) for t in tweets],
        )
        await conn.executemany(
            "INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ($1, $2)",
            [(t.id, tag) for t in tweets for tag in t.tags],
        )
    finally:
        await conn.close()


def expected_top_users(
    users: list[tuple[int, str, int | None, bool]], n: int
) -> dict[tuple[tuple[str, str], ...], float]:
    ranked = sorted(
        (u for u in users if u[2] is not None), key=lambda u: (-(u[2] or 0), u[1].encode())
    )
    return {
        (("username", u[1]), ("verified", "true" if u[3] else "false")): float(u[2] or 0)
        for u in ranked[:n]
    }


def expected_trending(
    tweets: list[Tweet], days: int, k: int
) -> dict[tuple[tuple[str, str], ...], float]:
    counts: Counter[str] = Counter()
    for tweet in tweets:
        if tweet.age <= timedelta(days=days):
            for tag in tweet.tags:
                counts[TAGS[tag - 1]] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0].encode()))
    return {(("tag", tag), ("window", f"{days}d")): float(n) for tag, n in ranked[:k]}


async def scrape(dsn: str, params: Settings) -> str:
    """What ``/metrics`` serves after every query's scheduled job ran once on ``params``; a
    query that failed fails here."""
    pipeline = build_pipeline(
        dataclasses.replace(params, dsn=dsn, query_timeout=5.0), process_metrics=False
    )
    await pipeline.open()
    try:
        assert await pipeline.run_all() is True
    finally:
        await pipeline.close(1.0)
    text = pipeline.store.current.text.body.decode()
    failed = [
        line
        for line in text.splitlines()
        if line.startswith("tw_exporter_query_errors_total") and not line.endswith(" 0.0")
    ]
    assert not failed, failed
    return text


async def test_numbers_match_an_independent_computation(seeded_db: str) -> None:
    users, tweets = build_rows(random.Random(20261125))
    await insert(seeded_db, users, tweets)
    for params in (
        query_params(top_users=5, trending_days=7, trending_limit=4, stats_days=7),
        query_params(top_users=1000, trending_days=3, trending_limit=1000, stats_days=30),
        query_params(top_users=1, trending_days=1, trending_limit=1, stats_days=1),
    ):
        text = await scrape(seeded_db, params)
        assert series(text, "tw_user_followers") == expected_top_users(users, params.top_users)
        assert series(text, "tw_hashtag_tweets") == expected_trending(
            tweets, params.trending_days, params.trending_limit
        )
        window = timedelta(days=params.stats_days)
        inside = [t for t in tweets if t.age <= window]
        known = [t.likes for t in inside if t.likes is not None]
        label = f"{params.stats_days}d"
        assert value(text, "tw_platform_tweets", window=label) == len(inside)
        assert value(text, "tw_platform_active_users", window=label) == len(
            {t.user_id for t in inside}
        )
        assert value(text, "tw_platform_likes", window=label) == sum(known)
        assert value(text, "tw_platform_likes_per_tweet", window=label) == (sum(known) / len(known))


async def test_ties_at_the_limit_are_stable_and_nulls_never_top(seeded_db: str) -> None:
    users = [(i, f"user{i:02d}", 50, False) for i in range(1, 21)]
    users += [(21, "nobody", None, True), (22, "star", 99, True)]
    await insert(seeded_db, users, [])
    params = query_params(top_users=5, trending_days=7, trending_limit=10, stats_days=7)
    first = series(await scrape(seeded_db, params), "tw_user_followers")
    assert first == expected_top_users(users, 5)
    assert (("username", "star"), ("verified", "true")) in first
    assert all(labels[0][1] != "nobody" for labels in first)
    for _ in range(3):
        assert series(await scrape(seeded_db, params), "tw_user_followers") == first


async def test_empty_window_gives_zeros_and_no_average(seeded_db: str) -> None:
    users = [(1, "old", 1, False)]
    tweets = [Tweet(1, 1, 4, timedelta(days=40), [1])]
    await insert(seeded_db, users, tweets)
    text = await scrape(
        seeded_db, query_params(top_users=10, trending_days=7, trending_limit=10, stats_days=7)
    )
    assert value(text, "tw_platform_tweets", window="7d") == 0
    assert value(text, "tw_platform_active_users", window="7d") == 0
    assert value(text, "tw_platform_likes", window="7d") == 0
    assert series(text, "tw_platform_likes_per_tweet") == {}
    assert "NaN" not in text
    assert series(text, "tw_hashtag_tweets") == {}


async def test_only_null_likes_give_zero_likes_and_no_average(seeded_db: str) -> None:
    users = [(1, "u", 1, False)]
    tweets = [Tweet(1, 1, None, timedelta(hours=1), []), Tweet(2, 1, None, timedelta(hours=2), [])]
    await insert(seeded_db, users, tweets)
    text = await scrape(
        seeded_db, query_params(top_users=10, trending_days=7, trending_limit=10, stats_days=7)
    )
    assert value(text, "tw_platform_tweets", window="7d") == 2
    assert value(text, "tw_platform_likes", window="7d") == 0
    assert series(text, "tw_platform_likes_per_tweet") == {}
