"""Trending hashtags over the last D days -> ``tw_hashtag_tweets{tag, window}``.

Returns what the seed's query returns (tweets per tag name inside the window, most first), in one
of two shapes, picked per connection by ``exporter.collectors.schema`` (docs/schema-variants.md).

``SQL``, the "id-range" shape, runs where ``tw_tweets.id`` is an indexed integer that grows with
``created_at`` (the shipped schema; sequence or snowflake ids). It stays cheap at 10M+ tweets
(``benchmarks/results/RESULTS.md``): it first finds the
smallest tweet id inside the window, reads only tweets and tweet-hashtag links from that id on
(in id order, so they merge-join), counts by ``hashtag_id``, and joins the few thousand tag names
last. The id bound is a pure pre-filter (every tweet in the window has an id >= it), so results
never depend on ids being time-ordered; when they are, the query reads only the window's rows.
``SQL_WINDOW_JOIN``, the "window-join" shape, runs everywhere else (UUID ids, integer ids in no
time order): it reads the window's tweets off the ``created_at`` index and joins their links
directly, without an id bound (which a UUID cannot have, and which would reach back to nearly
the first tweet when ids do not follow time).
Tags are grouped by name, as in the seed, so two hashtag rows with the same text count as one
tag. Ties at the LIMIT boundary are broken by tag (byte order, ``COLLATE "C"``, independent of
the database's collation) so the exported set is stable between cycles;
NULL tags (impossible with the shipped schema) are skipped because a label cannot be NULL.
``tests/test_query_equivalence.py`` proves the result equal to the seed's SQL. Indexes that make
it fast: ``exporter/sql/recommended-indexes.sql``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporter.collectors.base import MetricSpec, QueryCollector, QueryParams, Row, window_label

HASHTAG_TWEETS = MetricSpec(
    name="tw_hashtag_tweets",
    kind="gauge",
    help=(
        "Tweets carrying each trending hashtag within the trailing window (top K tags, set by "
        "--trending-limit; window by --trending-days). Refreshed from the database every "
        "collection interval; a tag that leaves the top K disappears."
    ),
    labels=("tag", "window"),
)

# Both shapes end alike: ``in_window`` holds (hashtag_id, tweet_count); the tag names are
# joined last, grouped by name, and the top $2 kept with ties broken by tag in byte order.
_TOP_TAGS = """SELECT h.tag, sum(w.tweet_count)::bigint AS tweet_count
FROM in_window w
JOIN tw_hashtags h ON h.id = w.hashtag_id
WHERE h.tag IS NOT NULL
GROUP BY h.tag
ORDER BY tweet_count DESC, h.tag COLLATE "C" ASC
LIMIT $2
"""

SQL = f"""
WITH bound AS MATERIALIZED (
    -- lo: the smallest id among the window's tweets, so every tweet in the window has an
    -- id >= lo however ids are assigned. "id + 0" keeps the planner from answering min(id)
    -- by walking the id index from the oldest tweet; the created_at index answers it.
    -- cutoff: the window's start, computed once instead of once per row below.
    SELECT min(id + 0) AS lo, now() - make_interval(days => $1::int) AS cutoff
    FROM tw_tweets
    WHERE created_at >= now() - make_interval(days => $1::int)
), in_window AS (
    -- Tweets and links are both read in id order from lo on: with time-ordered ids
    -- (snowflake-style) that is just the window's rows, and the ordered tweets make
    -- PostgreSQL merge-join them with the (tweet_id, hashtag_id) index instead of hashing
    -- a million tweets through a work_mem-sized hash table.
    SELECT th.hashtag_id, count(*) AS tweet_count
    FROM (
        SELECT id
        FROM tw_tweets
        WHERE id >= (SELECT lo FROM bound)
          AND created_at >= (SELECT cutoff FROM bound)
        ORDER BY id
    ) t
    JOIN (
        SELECT tweet_id, hashtag_id
        FROM tw_tweet_hashtags
        WHERE tweet_id >= (SELECT lo FROM bound)
    ) th ON th.tweet_id = t.id
    GROUP BY th.hashtag_id
)
{_TOP_TAGS}"""


SQL_WINDOW_JOIN = f"""
WITH in_window AS (
    -- The window's tweets (an index-only scan of the created_at index) and their links,
    -- counted per hashtag_id before the few thousand tag names are joined.
    SELECT th.hashtag_id, count(*) AS tweet_count
    FROM tw_tweets t
    JOIN tw_tweet_hashtags th ON th.tweet_id = t.id
    WHERE t.created_at >= now() - make_interval(days => $1::int)
    GROUP BY th.hashtag_id
)
{_TOP_TAGS}"""


def _params(settings: QueryParams) -> tuple[Any, ...]:
    return (settings.trending_days, settings.trending_limit)


def _to_families(rows: Sequence[Row], settings: QueryParams) -> list[Metric]:
    family = GaugeMetricFamily(
        HASHTAG_TWEETS.name, HASHTAG_TWEETS.help, labels=list(HASHTAG_TWEETS.labels)
    )
    window = window_label(settings.trending_days)
    for row in rows:
        family.add_metric([str(row["tag"]), window], float(row["tweet_count"]))
    return [family]


COLLECTOR = QueryCollector(
    name="trending_hashtags",
    sql=SQL,
    tables={
        "tw_tweets": ("id", "created_at"),
        "tw_tweet_hashtags": ("tweet_id", "hashtag_id"),
        "tw_hashtags": ("id", "tag"),
    },
    metrics=(HASHTAG_TWEETS,),
    params=_params,
    to_families=_to_families,
    shapes={"id-range": SQL, "window-join": SQL_WINDOW_JOIN},
)
