"""Trending hashtags over the last D days -> ``tw_hashtag_tweets{tag, window}``.

Returns what the seed's query returns (tweets per tag name inside the window, most first), but
counts by ``hashtag_id`` inside the window before joining tag names, so PostgreSQL aggregates
only the window's link rows instead of hashing the whole tag table into the join. Tags are
grouped by name, as in the seed, so two hashtag rows with the same text count as one tag. Ties
at the LIMIT boundary are broken by tag so the exported set is stable between cycles; NULL tags
(impossible with the shipped schema) are skipped because a label cannot be NULL.
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

SQL = """
WITH in_window AS (
    SELECT th.hashtag_id, count(*) AS tweet_count
    FROM tw_tweets t
    JOIN tw_tweet_hashtags th ON th.tweet_id = t.id
    WHERE t.created_at >= now() - make_interval(days => $1::int)
    GROUP BY th.hashtag_id
)
SELECT h.tag, sum(w.tweet_count)::bigint AS tweet_count
FROM in_window w
JOIN tw_hashtags h ON h.id = w.hashtag_id
WHERE h.tag IS NOT NULL
GROUP BY h.tag
ORDER BY tweet_count DESC, h.tag ASC
LIMIT $2
"""


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
)
